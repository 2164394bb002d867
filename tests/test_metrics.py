"""Caption metrics: known values, Java and pure-Python paths agree, bad input is rejected."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from captioner.errors import CaptionerError
from captioner.evaluation import metrics
from captioner.evaluation.metrics import (
    METRIC_NAMES,
    MetricReport,
    compute_metrics,
    exact_match_rate,
    format_table,
    simple_tokenize,
)

REFS = {
    "1.jpg": [
        "a large red circle above a small blue square",
        "a small blue square below a large red circle",
    ],
    "2.jpg": ["a dog runs on the grass", "a brown dog is running in a field"],
    "3.jpg": ["two people ride a boat on the lake"],
    "4.jpg": ["một con chó đang chạy trên bãi cỏ", "con chó chạy trên cỏ xanh"],
    "5.jpg": ["a man is riding a bicycle down the street"],
}
HYPS = {
    "1.jpg": "a large red circle above a small blue square",
    "2.jpg": "a dog is running on the grass",
    "3.jpg": "",
    "4.jpg": "một con chó chạy trên cỏ",
    "5.jpg": "a man rides a bike on a street",
}


def _children() -> set[int]:
    """Live child processes of this test process (Linux /proc)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def java_report() -> tuple[MetricReport, set[int]]:
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    before = _children()
    report = compute_metrics(REFS, HYPS, use_java=True)
    return report, _children() - before


def test_identical_captions_score_perfect_bleu() -> None:
    refs = {k: v for k, v in REFS.items() if k != "4.jpg"}
    hyps = {k: v[0] for k, v in refs.items()}
    report = compute_metrics(refs, hyps, use_java=False)
    for n in range(1, 5):
        assert report.scores[f"BLEU-{n}"] == pytest.approx(100.0, abs=1e-4)
    assert report.scores["ROUGE-L"] == pytest.approx(100.0)
    assert report.scores["CIDEr"] > 0
    assert exact_match_rate(refs, hyps) == 1.0


def test_hand_computed_bleu1() -> None:
    # 4 of the 5 hypothesis words are in the reference; brevity penalty exp(1 - 6/5)
    report = compute_metrics(
        {"x": ["the cat is on the mat"]}, {"x": "a cat on the mat"}, use_java=False
    )
    assert report.scores["BLEU-1"] == pytest.approx(100 * 0.8 * math.exp(-0.2), abs=1e-5)
    assert report.num_images == 1


def test_python_path_report_and_empty_hypothesis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    report = compute_metrics(REFS, HYPS)  # auto-detect: no Java
    assert report.tokenizer == "simple"
    assert report.skipped == ["METEOR: Java not found"]
    assert list(report.scores) == [n for n in METRIC_NAMES if n != "METEOR"]
    assert all(0 <= v <= 1000 for v in report.scores.values())
    assert report.to_dict()["num_images"] == 5
    table = format_table(report)
    assert "METEOR    skipped" in table and "CIDEr" in table and "tokenizer simple" in table
    empty = compute_metrics(REFS, {k: "" for k in REFS}, use_java=False)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in empty.scores.values())
    with pytest.raises(CaptionerError, match="java"):
        compute_metrics(REFS, HYPS, use_java=True)


def test_invalid_inputs_raise_clear_errors() -> None:
    with pytest.raises(CaptionerError, match="different images"):
        compute_metrics(REFS, {"1.jpg": "a"}, use_java=False)
    with pytest.raises(CaptionerError, match="different images"):
        exact_match_rate({"a": ["x"]}, {"a": "x", "b": "y"})
    with pytest.raises(CaptionerError, match="non-empty list"):
        compute_metrics({"a": []}, {"a": "x"}, use_java=False)
    with pytest.raises(CaptionerError, match="non-empty list"):
        compute_metrics({"a": "x"}, {"a": "x"}, use_java=False)
    with pytest.raises(CaptionerError, match="no images"):
        compute_metrics({}, {}, use_java=False)


def test_simple_tokenizer_and_exact_match() -> None:
    assert (
        simple_tokenize("A Dog's toy, isn't it?  (Yes!)")
        == "a dog 's toy is n't it -lrb- yes -rrb-"
    )
    assert simple_tokenize("Một con chó, đang chạy.") == "một con chó đang chạy"
    assert simple_tokenize("e-mail 3.5 U.S. ... --") == "e-mail 3.5 u.s."
    assert simple_tokenize("") == ""
    refs = {"a": ["A red circle."], "b": ["Con chó chạy"], "c": ["x"]}
    hyps = {"a": "a  red circle", "b": "con CHÓ chạy!", "c": "y"}
    assert exact_match_rate(refs, hyps) == pytest.approx(2 / 3)


def test_vietnamese_python_path() -> None:
    refs = {"a": ["Một con chó đang chạy."], "b": ["Hai người trên thuyền."]}
    hyps = {"a": "một con chó đang chạy", "b": "hai người"}
    report = compute_metrics(refs, hyps, use_java=False)
    assert 0 < report.scores["BLEU-1"] < 100 and report.scores["ROUGE-L"] > 50


def test_java_path_matches_python_path(java_report: tuple[MetricReport, set[int]]) -> None:
    report, leaked = java_report
    assert leaked == set(), "the METEOR / tokenizer Java processes must be ended"
    assert report.tokenizer == "ptb-java" and report.skipped == []
    assert list(report.scores) == list(METRIC_NAMES)
    assert 0 < report.scores["METEOR"] < 100  # Vietnamese and an empty hypothesis included
    python = compute_metrics(REFS, HYPS, use_java=False)
    for name, value in python.scores.items():
        assert report.scores[name] == pytest.approx(value, abs=1e-6), name
