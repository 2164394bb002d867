"""`captioner report`: the HTML page of a split, sorted by CIDEr, with pictures and maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main
from tests.tiny import split_command, train_tiny, write_tiny_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("report")
    manifest, features, _ = write_tiny_dataset(root)
    (root / "images").mkdir()
    for i in range(5):  # val5.png stays missing: the report must say so, not fail
        Image.fromarray(np.full((24, 32, 3), 40 * i, dtype=np.uint8)).save(
            root / "images" / f"val{i}.png"
        )
    return manifest, features, train_tiny(manifest, features, root / "run", epochs=2)


def test_report_page_sorted_by_cider(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, features, model = trained
    out = tmp_path / "report"
    extra = ["--out", str(out), "--beam-size", "1", "--no-java", "--no-progress"]
    assert main(split_command("report", model, manifest, features, "val", *extra)) == 0
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = data["rows"]
    assert len(rows) == 6 and data["images"] == 6
    ciders = [row["CIDEr"] for row in rows]
    assert ciders == sorted(ciders)
    assert np.mean(ciders) == pytest.approx(data["scores"]["CIDEr"], abs=1e-2)
    for row in rows:
        assert len(row["token_probs"]) == len(row["tokens"])
        assert all(0 < p <= 1 for p in row["token_probs"])
        if row["image"] == "val5.png":
            assert row["thumbnail"] is None and row["attention"] is None
        else:
            assert (out / row["thumbnail"]).is_file()
            if row["tokens"]:
                assert Image.open(out / row["attention"]).format == "JPEG"
    assert any("val5.png" in note for note in data["notes"])
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("<tr><td data-v=") == 6
    assert "a red circle above a blue square" in page  # references are listed
    assert page.index(rows[0]["image"]) < page.index(rows[-1]["image"])


def test_report_unknown_split_is_a_clear_error(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, features, model = trained
    extra = ["--out", str(tmp_path / "r"), "--no-java"]
    code = main(split_command("report", model, manifest, features, "test", *extra))
    assert code == 2
    assert "no split 'test'" in capsys.readouterr().err


def test_evaluate_json_has_per_image_scores(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    manifest, features, model = trained
    out = tmp_path / "eval.json"
    extra = ["--no-java", "--no-progress", "--output", str(out)]
    assert main(split_command("evaluate", model, manifest, features, "val", *extra)) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    per_image = [c["CIDEr"] for c in report["captions"].values()]
    assert np.mean(per_image) == pytest.approx(report["scores"]["CIDEr"], abs=1e-6)
    assert all(0 <= c["BLEU-4"] <= 100 for c in report["captions"].values())
