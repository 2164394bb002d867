"""`--denoise` in extract and caption: the denoiser really runs first (seen in the results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from denoise_tiny import active_denoiser, noisy_copy, one_thread  # noqa: F401
from PIL import Image

from captioner.cli import main
from captioner.demo.shapes import generate_shapes_dataset
from captioner.denoise import load_denoiser
from captioner.features.cache import FeatureCache
from captioner.vision.backbones import offline_mobilenet_weights

SMALL_DECODER = [
    "--set",
    *(f"model.{k}_dim=16" for k in ("hidden", "attention", "encoder", "embed")),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if offline_mobilenet_weights() is None:  # random-init MobileNetV2 features are all zero
        pytest.skip("needs the offline MobileNetV2 weights (make venv installs them)")
    root = tmp_path_factory.mktemp("dnpipe")
    captions = generate_shapes_dataset(root / "data", num_images=10, seed=2, image_size=64)
    images = root / "data" / "images"
    for path in images.glob("*.png"):  # the noisy fixture: every scene gets sigma-40 noise
        Image.fromarray(noisy_copy(np.asarray(Image.open(path).convert("RGB")), 40)).save(path)
    manifest = root / "manifest.json"
    assert main(["prepare", str(captions), "--images", str(images), "--out", str(manifest)]) == 0
    denoiser = active_denoiser(root / "denoiser")
    common = ["--manifest", str(manifest), "--workers", "0", "--no-progress"]
    assert main(["extract", *common, "--out", str(root / "plain")]) == 0
    assert main(["extract", *common, "--out", str(root / "den"), "--denoise", str(denoiser)]) == 0
    run = root / "run"
    train = ["train", "--manifest", str(manifest), "--features", str(root / "plain")]
    small = SMALL_DECODER
    assert main([*train, "--out", str(run), "--epochs", "1", "--no-progress", *small]) == 0
    return {
        "root": root,
        "images": images,
        "manifest": manifest,
        "denoiser": denoiser,
        "common": common,  # type: ignore[dict-item]
        "model": run / "model",
    }


def test_extract_records_and_applies_the_denoiser(setup: dict) -> None:
    weights_id = load_denoiser(setup["denoiser"]).weights_id
    plain = FeatureCache.open(setup["root"] / "plain" / "train")
    den = FeatureCache.open(setup["root"] / "den" / "train")
    assert den.header["image_transform"] == f"denoiser-{weights_id}"
    assert plain.header.get("image_transform") is None
    a, b = (np.asarray(c.array, dtype=np.float32) for c in (plain, den))
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3


def test_resuming_a_cache_with_another_denoising_is_refused(setup: dict, capsys) -> None:
    common, root = setup["common"], setup["root"]
    den = ["--denoise", str(setup["denoiser"])]
    assert main(["extract", *common, "--out", str(root / "plain"), *den]) == 2
    assert "image_transform" in capsys.readouterr().err
    assert main(["extract", *common, "--out", str(root / "den")]) == 2
    assert main(["extract", *common, "--out", str(root / "den"), *den]) == 0  # same: resumes


def test_caption_denoises_first(setup: dict, tmp_path: Path) -> None:
    noisy = sorted(setup["images"].glob("*.png"))[:3]
    cleaned = tmp_path / "cleaned"
    model, denoiser = str(setup["model"]), str(setup["denoiser"])
    args = ["denoise", "apply", *map(str, noisy), "--model", denoiser, "--out", str(cleaned)]
    assert main([*args, "--no-progress"]) == 0

    def caption(paths: list[Path], *extra: str) -> list[dict]:
        out = tmp_path / f"c{len(list(tmp_path.iterdir()))}.json"
        cmd = ["caption", *map(str, paths), "--model", model]
        assert main([*cmd, "--greedy", "--json", "--output", str(out), *extra]) == 0
        return json.loads(out.read_text())

    chained = caption(noisy, "--denoise", denoiser)
    by_hand = caption(sorted(cleaned.iterdir()))
    plain = caption(noisy)
    strip = [{k: v for k, v in r.items() if k != "image"} for r in chained]
    assert strip == [{k: v for k, v in r.items() if k != "image"} for r in by_hand]
    assert [r["token_log_probs"] for r in chained] != [r["token_log_probs"] for r in plain]


def test_a_model_trained_on_denoised_features_notes_undenoised_input(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, root, denoiser = setup["manifest"], setup["root"], str(setup["denoiser"])
    small = SMALL_DECODER
    train = ["train", "--manifest", str(manifest), "--epochs", "1", "--no-progress", *small]
    assert main([*train, "--features", str(root / "den"), "--out", str(tmp_path / "run")]) == 0
    model = tmp_path / "run" / "model"
    weights_id = load_denoiser(setup["denoiser"]).weights_id
    info = json.loads((model / "config.json").read_text())["info"]
    assert info["image_transform"] == f"denoiser-{weights_id}"
    plain_info = json.loads((setup["model"] / "config.json").read_text())["info"]
    assert plain_info["image_transform"] is None
    capsys.readouterr()

    photo = str(sorted(setup["images"].glob("*.png"))[0])
    assert main(["caption", photo, "--model", str(model), "--greedy"]) == 0
    err = capsys.readouterr().err
    assert f"trained on features of images denoised by denoiser-{weights_id}" in err
    assert "captioned from images as they are (not denoised)" in err
    assert main(["caption", photo, "--model", str(model), "--greedy", "--denoise", denoiser]) == 0
    assert "note:" not in capsys.readouterr().err

    out = tmp_path / "eval.json"
    evaluate = ["evaluate", "--model", str(model), "--manifest", str(manifest), "--split", "val"]
    evaluate += ["--no-java", "--output", str(out)]
    assert main([*evaluate, "--features", str(root / "plain")]) == 0
    assert f"{root / 'plain' / 'val'} are of images as they are" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["notes"]) == 1
    assert main([*evaluate, "--features", str(root / "den")]) == 0
    assert "are of images" not in capsys.readouterr().out
    assert json.loads(out.read_text())["notes"] == []
