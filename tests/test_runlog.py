"""Progress bars report each step to CAPTIONER_PROGRESS_FILE, shown or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.runlog import PROGRESS_FILE_ENV, Progress


def test_each_step_is_one_json_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(events))
    assert list(Progress(["a", "b", "c"], desc="epoch 2", disable=True)) == ["a", "b", "c"]
    with Progress(desc="pipeline", total=10, disable=False) as bar:
        bar.update(4)
        bar.update(6)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines == [
        {"bar": "epoch 2", "done": 1, "total": 3},
        {"bar": "epoch 2", "done": 2, "total": 3},
        {"bar": "epoch 2", "done": 3, "total": 3},
        {"bar": "pipeline", "done": 4, "total": 10},
        {"bar": "pipeline", "done": 10, "total": 10},
    ]


def test_without_the_variable_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert sum(Progress(range(4), desc="x", disable=True)) == 6
    assert list(tmp_path.iterdir()) == []
