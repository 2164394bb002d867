"""The CLI end to end on a few generated scenes: prepare -> extract -> train -> caption."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.cli import main
from captioner.demo.shapes import generate_shapes_dataset


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    captions = generate_shapes_dataset(root / "data", num_images=24, seed=1, image_size=96)
    images = root / "data" / "images"
    # bad files the dataset must survive: a corrupt PNG and a CMYK JPEG
    (images / "shape_00003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(images / "cmyk.jpg")
    with captions.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"image": "cmyk.jpg", "caption": "a red picture"}) + "\n")
        handle.write(json.dumps({"image": "absent.png", "caption": "not there"}) + "\n")
    manifest = root / "manifest.json"
    assert main(["prepare", str(captions), "--images", str(images), "--out", str(manifest)]) == 0
    features = root / "features"
    args = [
        "extract",
        "--manifest",
        str(manifest),
        "--out",
        str(features),
        "--weights",
        "none",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert main(args) == 0
    run = root / "run"
    assert (
        main(
            [
                "train",
                "--manifest",
                str(manifest),
                "--features",
                str(features),
                "--out",
                str(run),
                "--epochs",
                "2",
                "--no-progress",
                "--set",
                "model.hidden_dim=32",
                "model.attention_dim=32",
                "model.encoder_dim=32",
            ]
        )
        == 0
    )
    return {"root": root, "manifest": manifest, "features": features, "run": run, "images": images}


def test_prepare_reports_missing_image(pipeline: dict[str, Path]) -> None:
    data = json.loads(pipeline["manifest"].read_text())
    assert data["skipped"]["missing_image"] == ["absent.png"]
    files = {r["file"] for r in data["images"]}
    assert "cmyk.jpg" in files and len(files) == 25


def test_extract_skips_the_corrupt_image_and_converts_cmyk(pipeline: dict[str, Path]) -> None:
    failures = {}
    for split in ("train", "val", "test"):
        failures.update(json.loads((pipeline["features"] / split / "failures.json").read_text()))
    assert list(failures) == ["shape_00003.png"]
    # a second run resumes: nothing left to do, nothing recomputed
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert (
            main(
                [
                    "extract",
                    "--manifest",
                    str(pipeline["manifest"]),
                    "--out",
                    str(pipeline["features"]),
                    "--weights",
                    "none",
                    "--workers",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert "0 extracted now" in out.getvalue()


def test_caption_folder_json_csv_and_attention_maps(
    pipeline: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = pipeline["run"] / "model"
    attention = pipeline["root"] / "attention"
    images = pipeline["images"]
    code = main(
        [
            "caption",
            str(images),
            "--model",
            str(model),
            "--backbone-weights",
            "none",
            "--json",
            "--attention-dir",
            str(attention),
            "--max-length",
            "8",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 25  # 24 scenes (one corrupt) + cmyk.jpg
    bad = [r for r in results if "error" in r]
    assert len(bad) == 1 and "shape_00003.png" in bad[0]["error"]
    assert "shape_00003.png" in captured.err
    good = [r for r in results if "error" not in r]
    assert all(r["caption"] and len(r["tokens"]) <= 8 for r in good)
    pngs = sorted(attention.glob("*.png"))
    assert len(pngs) == 24 and all(p.stat().st_size > 2000 for p in pngs)

    out_csv = pipeline["root"] / "captions.csv"
    assert (
        main(
            [
                "caption",
                str(images / "shape_00000.png"),
                "--model",
                str(model),
                "--backbone-weights",
                "none",
                "--greedy",
                "--csv",
                "--output",
                str(out_csv),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 1 and rows[0]["image"].endswith("shape_00000.png") and rows[0]["caption"]


def test_user_errors_are_one_line_messages_not_tracebacks(
    pipeline: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["caption", "nowhere.jpg", "--model", str(pipeline["run"] / "model")]) == 2
    assert "nowhere.jpg" in capsys.readouterr().err
    # the model was trained on random-init features: the offline ImageNet weights are refused
    code = main(
        [
            "caption",
            str(pipeline["images"] / "shape_00000.png"),
            "--model",
            str(pipeline["run"] / "model"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "weights_id" in err and "Traceback" not in err
    assert (
        main(
            [
                "train",
                "--manifest",
                str(pipeline["manifest"]),
                "--features",
                str(pipeline["features"]),
                "--out",
                str(pipeline["run"]),
            ]
        )
        == 2
    )
    assert "--resume" in capsys.readouterr().err
