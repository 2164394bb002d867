"""Every stage against the bad-input corpus: a clear one-line message or a listed skip.

The real CLI (``captioner.cli.main``) runs in-process: an exception other than a
``CaptionerError`` would escape and fail the test, so "exit code 2 and one line on stderr"
means the user got a message, not a traceback. Earlier outputs are compared byte for byte
after each refused run.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fault_corpus import (
    BAD_IMAGES,
    GOOD_IMAGES,
    IMAGE_CASES,
    annotation_cases,
    image_bytes,
    write_annotation_corpus,
    write_image_corpus,
)

from captioner.cli import main
from captioner.errors import ImageLoadError
from captioner.vision.images import load_image

SMALL_MODEL = [
    "model.hidden_dim=32",
    "model.attention_dim=32",
    "model.encoder_dim=32",
    "model.embed_dim=16",
]
CASE_BY_NAME = {case.name: case for case in IMAGE_CASES}
# Which split each corpus image goes to in the pipeline's annotations (bad ones in every split).
SPLITS = {
    "ok_photo.jpg": "train",
    "cmyk.jpg": "train",
    "gray16.png": "train",
    "gray.png": "train",
    "palette.png": "train",
    "truncated.jpg": "train",
    "truncated.png": "train",
    "corrupt.png": "train",
    "empty.jpg": "train",
    "alpha.png": "val",
    "exif_rotated.jpg": "val",
    "text.jpg": "val",
    "corrupt.jpg": "val",
    "one_pixel.png": "test",
    "bomb.png": "test",
}


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """prepare -> extract -> train over the whole image corpus, outputs kept for the tests."""
    root = tmp_path_factory.mktemp("reliability")
    images = root / "images"
    write_image_corpus(images)
    lines = [
        json.dumps({"image": name, "caption": f"picture number {i} of the corpus", "split": split})
        for i, (name, split) in enumerate(SPLITS.items())
    ]
    lines.insert(3, '{"image": "half a line')
    annotations = root / "captions.jsonl"
    annotations.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest, features, run = root / "manifest.json", root / "features", root / "run"
    steps = {
        "prepare": ["prepare", annotations, "--images", images, "--out", manifest],
        "extract": [
            "extract",
            "--manifest",
            manifest,
            "--out",
            features,
            "--weights",
            "none",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--no-progress",
        ],
        "train": [
            "train",
            "--manifest",
            manifest,
            "--features",
            features,
            "--out",
            run,
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            *SMALL_MODEL,
        ],
    }
    result: dict[str, object] = {
        "root": root,
        "images": images,
        "manifest": manifest,
        "features": features,
        "run": run,
    }
    for name, args in steps.items():
        code, out, err = run_cli(args)
        assert code == 0, (name, out, err)
        assert "Traceback" not in err
        result[name] = out + err
    return result


# ---------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.name)
def test_load_image_decodes_odd_files_and_names_broken_ones(tmp_path: Path, case) -> None:
    path = tmp_path / case.name
    path.write_bytes(image_bytes(case.name))
    if case.problem is None:
        image = load_image(path)
        assert image.mode == "RGB" and image.size == case.size
    else:
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert str(path) in str(info.value) and case.problem in str(info.value)


# ---------------------------------------------------------------------------- prepare


@pytest.mark.parametrize("case", annotation_cases(GOOD_IMAGES), ids=lambda c: c.name)
def test_prepare_refuses_or_lists_every_bad_annotation(tmp_path: Path, case) -> None:
    images = tmp_path / "images"
    write_image_corpus(images, GOOD_IMAGES)
    annotations = write_annotation_corpus(tmp_path / "ann", GOOD_IMAGES)
    path = tmp_path / "ann" / case.name
    out = tmp_path / "manifest.json"
    out.write_text('{"earlier": "manifest"}\n')  # an earlier output that must survive a refusal
    code, stdout, err = run_cli(["prepare", path, "--images", images, "--out", out])
    assert annotations and "Traceback" not in err
    if case.fatal:
        assert_one_line_error(code, err, case.name, case.fatal)
        assert out.read_text() == '{"earlier": "manifest"}\n'
        return
    assert code == 0, err
    manifest = json.loads(out.read_text())
    kept = {record["file"] for record in manifest["images"]}
    assert set(case.kept) <= kept
    for reason, fragments in case.skipped.items():
        listed = manifest["skipped"].get(reason, [])
        for fragment in fragments:
            assert any(fragment in item for item in listed), (reason, fragment, listed)
        assert f"{reason}: {len(listed)}" in stdout  # counted in the printed report
    # images of the folder without any caption are listed too
    for name in set(GOOD_IMAGES) - kept:
        assert name in manifest["skipped"]["no_captions"]


def test_prepare_lists_the_corpus_pipeline_problems(pipeline: dict) -> None:
    manifest = json.loads(Path(pipeline["manifest"]).read_text())
    assert manifest["skipped"]["malformed_line"] == [
        "line 4 of captions.jsonl (invalid JSON at column 11)"
    ]
    # prepare does not decode pictures: every file with a caption is in the manifest
    assert {r["file"] for r in manifest["images"]} == set(SPLITS)


# ---------------------------------------------------------------------------- extract


def test_extract_skips_lists_and_counts_every_bad_image(pipeline: dict) -> None:
    features = Path(pipeline["features"])
    failures: dict[str, str] = {}
    for split in ("train", "val", "test"):
        failures.update(json.loads((features / split / "failures.json").read_text()))
        status = np.load(features / split / "status.npy")
        assert (status != 0).all()  # every image processed: ok or failed
    assert sorted(failures) == sorted(BAD_IMAGES)
    for name, problem in failures.items():
        assert CASE_BY_NAME[name].problem in problem
    report = str(pipeline["extract"])
    for name in BAD_IMAGES:
        assert f"skipped {name}:" in report
    assert "train: 9 images, 5 extracted now, 0 already done, 4 failed" in report


def test_extract_refuses_another_setting_and_leaves_the_cache_untouched(
    pipeline: dict, tmp_path: Path
) -> None:
    from denoise_tiny import active_denoiser

    features = Path(pipeline["features"])
    before = snapshot(features)
    denoiser = active_denoiser(tmp_path / "denoiser")
    code, _, err = run_cli(
        [
            "extract",
            "--manifest",
            pipeline["manifest"],
            "--out",
            features,
            "--weights",
            "none",
            "--workers",
            "0",
            "--no-progress",
            "--denoise",
            denoiser,
        ]
    )
    assert_one_line_error(code, err.splitlines()[-1] + "\n", "image_transform", str(features))
    assert snapshot(features) == before


def test_extract_of_a_corrupt_manifest_is_one_message(pipeline: dict, tmp_path: Path) -> None:
    bad = tmp_path / "manifest.json"
    bad.write_bytes(Path(pipeline["manifest"]).read_bytes()[:-40])
    code, _, err = run_cli(["extract", "--manifest", bad, "--out", tmp_path / "f"])
    assert_one_line_error(code, err, str(bad), "invalid JSON")
    assert not (tmp_path / "f").exists()


# ---------------------------------------------------------------------------- train


def test_train_skips_images_without_features_and_says_so(pipeline: dict) -> None:
    report = str(pipeline["train"])
    assert "train: 4 images skipped (no features" in report
    assert "val: 2 images skipped (no features" in report
    assert (Path(pipeline["run"]) / "model" / "model.safetensors").is_file()


def test_train_on_a_truncated_cache_is_refused_before_writing(
    pipeline: dict, tmp_path: Path
) -> None:
    import shutil

    features = tmp_path / "features"
    shutil.copytree(Path(pipeline["features"]), features)
    data = (features / "train" / "features.npy").read_bytes()
    (features / "train" / "features.npy").write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--manifest", pipeline["manifest"], "--features", features, "--out", out]
    )
    assert_one_line_error(code, err, str(features / "train"))
    assert not out.exists()


# ---------------------------------------------------------------------------- caption


def test_caption_folder_captions_the_good_and_lists_the_bad(pipeline: dict, tmp_path: Path) -> None:
    output = tmp_path / "captions.json"
    code, _, err = run_cli(
        [
            "caption",
            pipeline["images"],
            "--model",
            Path(pipeline["run"]) / "model",
            "--backbone-weights",
            "none",
            "--greedy",
            "--max-length",
            "6",
            "--json",
            "--output",
            output,
        ]
    )
    assert code == 0 and "Traceback" not in err
    results = {Path(r["image"]).name: r for r in json.loads(output.read_text())}
    assert sorted(results) == sorted(SPLITS)
    for name in GOOD_IMAGES:
        # (a 2-epoch model may say nothing yet: what matters is that the image was decoded)
        assert "error" not in results[name] and isinstance(results[name]["tokens"], list)
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(BAD_IMAGES)
    for name in BAD_IMAGES:
        assert CASE_BY_NAME[name].problem in results[name]["error"]
        assert any(name in line and CASE_BY_NAME[name].problem in line for line in skipped)


def test_caption_of_only_bad_images_exits_1_with_every_file_named(
    pipeline: dict,
) -> None:
    images = Path(pipeline["images"])
    code, _, err = run_cli(
        [
            "caption",
            images / "empty.jpg",
            images / "text.jpg",
            "--model",
            Path(pipeline["run"]) / "model",
            "--backbone-weights",
            "none",
        ]
    )
    assert code == 1 and "Traceback" not in err
    assert "empty.jpg: empty file" in err and "text.jpg: not an image" in err


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_counts_images_without_features(pipeline: dict, tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    code, stdout, err = run_cli(
        [
            "evaluate",
            "--model",
            Path(pipeline["run"]) / "model",
            "--manifest",
            pipeline["manifest"],
            "--features",
            pipeline["features"],
            "--split",
            "val",
            "--beam-size",
            "1",
            "--no-java",
            "--no-progress",
            "--output",
            output,
        ]
    )
    assert code == 0 and "Traceback" not in err
    assert "2 images without features were not evaluated" in stdout
    report = json.loads(output.read_text())
    assert sorted(report["images_without_features"]) == ["corrupt.jpg", "text.jpg"]
    assert report["num_images"] == 2


def test_evaluate_unknown_split_and_foreign_features_are_one_message(
    pipeline: dict, tmp_path: Path
) -> None:
    args = ["evaluate", "--model", Path(pipeline["run"]) / "model", "--manifest"]
    code, _, err = run_cli(
        [*args, pipeline["manifest"], "--features", pipeline["features"], "--split", "nope"]
    )
    assert_one_line_error(code, err, str(pipeline["manifest"]), "no split 'nope'")
    code, _, err = run_cli(
        [*args, pipeline["manifest"], "--features", tmp_path, "--split", "val", "--no-java"]
    )
    assert_one_line_error(code, err, str(tmp_path / "val"), "not a complete feature cache")


# ---------------------------------------------------------------------------- denoise apply


def test_denoise_apply_writes_the_good_and_lists_the_bad(pipeline: dict, tmp_path: Path) -> None:
    from denoise_tiny import active_denoiser

    denoiser = active_denoiser(tmp_path / "denoiser")
    out = tmp_path / "clean"
    out.mkdir()
    (out / "truncated.jpg").write_bytes(b"an earlier output")  # must not be replaced
    code, stdout, err = run_cli(
        ["denoise", "apply", pipeline["images"], "--model", denoiser, "--out", out, "--no-progress"]
    )
    assert code == 0 and "Traceback" not in err
    assert f"{len(GOOD_IMAGES)} images denoised" in stdout
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(BAD_IMAGES)
    for name in BAD_IMAGES:
        assert any(name in line and CASE_BY_NAME[name].problem in line for line in skipped)
    for name in GOOD_IMAGES:
        assert load_image(out / name).size == CASE_BY_NAME[name].size
    assert (out / "truncated.jpg").read_bytes() == b"an earlier output"
    assert sorted(p.name for p in out.iterdir()) == sorted([*GOOD_IMAGES, "truncated.jpg"])


# ---------------------------------------------------------------------------- the API


def test_api_answers_every_corpus_file(tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from serve_support import TINY_CAPTION, build_tiny_captioner, live_server

    from captioner.serve import create_app

    app = create_app(build_tiny_captioner(tmp_path / "model"))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for case in IMAGE_CASES:
            files = [("image", (case.name, image_bytes(case.name), "application/octet-stream"))]
            response = client.post("/v1/caption", files=files, data={"beam_size": "1"})
            if case.problem is None:
                assert response.status_code == 200, (case.name, response.text)
                assert response.json()["results"][0]["caption"] == TINY_CAPTION
            else:
                assert response.status_code in (413, 415, 422), (case.name, response.text)
                body = response.json()
                assert case.name in body["detail"] and body["code"]
        # the service is still healthy after every refusal
        assert client.get("/v1/health").json()["status"] == "ok"


def test_installed_entry_point_gives_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The same through a real process: ``python -m captioner.cli`` exits 2 with one line."""
    import subprocess
    import sys

    bad = tmp_path / "latin1.csv"
    bad.write_bytes("a.jpg,une fenêtre\n".encode("latin-1"))
    (tmp_path / "images").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "prepare", str(bad), "--images",
         str(tmp_path / "images"), "--out", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"captioner prepare: error: {bad}: not valid UTF-8 text: byte 0xea at byte offset 13 "
        "(line 1); re-save the file as UTF-8"
    ]
    assert not (tmp_path / "m.json").exists()


def test_images_missing_from_the_cache_are_skipped_not_fatal(
    pipeline: dict, tmp_path: Path
) -> None:
    """A manifest naming an image the cache never saw: listed like a failed image."""
    manifest = json.loads(Path(pipeline["manifest"]).read_text())
    for split in ("train", "val"):
        manifest["images"].append({"file": f"late_{split}.jpg", "split": split, "captions": ["x"]})
    grown = tmp_path / "manifest.json"
    grown.write_text(json.dumps(manifest))
    model = Path(pipeline["run"]) / "model"
    code, stdout, err = run_cli(
        ["evaluate", "--model", model, "--manifest", grown, "--features", pipeline["features"],
         "--split", "val", "--beam-size", "1", "--no-java", "--no-progress"]
    )  # fmt: skip
    assert code == 0, err
    assert "3 images without features were not evaluated" in stdout
    code, stdout, err = run_cli(
        ["train", "--manifest", grown, "--features", pipeline["features"], "--out",
         tmp_path / "run", "--epochs", "1", "--device", "cpu", "--no-progress", "--set",
         *SMALL_MODEL]
    )  # fmt: skip
    assert code == 0, err
    assert "train: 5 images skipped" in stdout and "late_train.jpg" not in err
