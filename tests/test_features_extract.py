"""extract_split / extract_manifest: failures recorded, resume after interruption, refusals."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from captioner.errors import CacheMismatchError
from captioner.features import cache as cache_module
from captioner.features.cache import FeatureCache
from captioner.features.extract import ExtractReport, extract_manifest, extract_split
from captioner.vision.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocessing
from captioner.vision.images import load_image


def tiny_backbone(weights_id: str = "tiny-1") -> Backbone:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 4, kernel_size=8, stride=8), nn.ReLU())
    return Backbone(
        "tiny", trunk, 4, (4, 4), Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD), weights_id
    )


def make_images(folder: Path, n: int = 10, bad: tuple[int, ...] = (3,)) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        if i in bad:
            path.write_text("not a picture")
        else:
            pixels = rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        records.append((path.name, path))
    return records


class StopAfter:
    """An image_transform that raises after ``n`` images, like a run killed midway."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, image: Image.Image) -> Image.Image:
        self.n -= 1
        if self.n < 0:
            raise KeyboardInterrupt
        return image


def run(records: list[tuple[str, Path]], out: Path, **kw: object) -> ExtractReport:
    kw = {"backbone": tiny_backbone(), "batch_size": 2, "num_workers": 0, "progress": False, **kw}
    return extract_split(records, out, **kw)  # type: ignore[arg-type]


def test_extract_records_failures_and_skips_done(tmp_path: Path) -> None:
    records = make_images(tmp_path / "img")
    report = run(records, tmp_path / "f")
    assert (report.total, report.extracted_now, report.already_done) == (10, 9, 0)
    assert list(report.failed) == ["img03.png"]
    assert "not an image" in report.failed["img03.png"]
    cache = FeatureCache.open(tmp_path / "f", expected=tiny_backbone().header())
    assert cache.is_complete() and cache.failures() == report.failed
    backbone = tiny_backbone()
    with torch.inference_mode():
        direct = backbone(backbone.transform(load_image(records[5][1])).unsqueeze(0))[0]
    np.testing.assert_allclose(cache.features(5), direct.numpy(), rtol=1e-3, atol=1e-3)

    again = run(records, tmp_path / "f")
    assert (again.extracted_now, again.already_done, list(again.failed)) == (0, 9, ["img03.png"])


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path) -> None:
    records = make_images(tmp_path / "img")
    run(records, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(records, tmp_path / "cut", image_transform=StopAfter(5), flush_every=100)
    status = FeatureCache.open(tmp_path / "cut").status
    assert 0 < (status != 0).sum() < 10  # the finished batches were kept
    report = run(records, tmp_path / "cut", batch_size=3)
    assert report.already_done + report.extracted_now == 9
    whole, cut = FeatureCache.open(tmp_path / "whole"), FeatureCache.open(tmp_path / "cut")
    np.testing.assert_array_equal(whole.array, cut.array)
    assert whole.status.tolist() == cut.status.tolist()


def test_kill_loses_only_unflushed_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = make_images(tmp_path / "img", bad=())
    real_flush = cache_module.FeatureCache.flush
    calls = {"n": 0}

    def flush_once(self: FeatureCache) -> None:  # later flushes never happen: "SIGKILL"
        calls["n"] += 1
        if calls["n"] <= 2:  # the one at creation and the first periodic one
            real_flush(self)

    monkeypatch.setattr(cache_module.FeatureCache, "flush", flush_once)
    with pytest.raises(KeyboardInterrupt):
        run(records, tmp_path / "cut", image_transform=StopAfter(8), flush_every=2)
    monkeypatch.undo()
    assert FeatureCache.open(tmp_path / "cut").status.tolist() == [1] * 4 + [0] * 6
    report = run(records, tmp_path / "cut")
    assert (report.already_done, report.extracted_now) == (4, 6)
    run(records, tmp_path / "whole")
    whole, cut = FeatureCache.open(tmp_path / "whole"), FeatureCache.open(tmp_path / "cut")
    np.testing.assert_array_equal(whole.array, cut.array)


def test_mismatched_backbone_or_keys_refused(tmp_path: Path) -> None:
    records = make_images(tmp_path / "img", n=4)
    run(records, tmp_path / "f")
    with pytest.raises(CacheMismatchError, match="weights_id"):
        run(records, tmp_path / "f", backbone=tiny_backbone("tiny-2"))
    with pytest.raises(CacheMismatchError, match="another image list.*new --out"):
        run(records[:3], tmp_path / "f")
    with pytest.raises(CacheMismatchError, match="image_transform"):
        run(records, tmp_path / "f", extra_header={"image_transform": "denoiser-1"})


def test_retry_failed(tmp_path: Path) -> None:
    records = make_images(tmp_path / "img", n=4, bad=(1,))
    run(records, tmp_path / "f")
    Image.new("RGB", (8, 8)).save(records[1][1], format="PNG")  # the user fixed the file
    assert list(run(records, tmp_path / "f").failed) == ["img01.png"]
    report = run(records, tmp_path / "f", retry_failed=True)
    assert (report.extracted_now, report.failed) == (1, {})


def test_workers_and_real_backbone(tmp_path: Path) -> None:
    from captioner.vision.backbones import load_backbone

    records = make_images(tmp_path / "img", n=5, bad=(2,))
    report = run(
        records, tmp_path / "w", num_workers=2, backbone=load_backbone("mobilenet_v2", "none")
    )
    assert (report.extracted_now, list(report.failed)) == (4, ["img02.png"])
    cache = FeatureCache.open(tmp_path / "w")
    assert cache.array.shape == (5, 49, 1280)
    assert cache.header["backbone"] == "mobilenet_v2"


def test_extract_manifest_writes_one_folder_per_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = make_images(tmp_path / "img", n=5, bad=())
    splits = {"train": records[:3], "val": records[3:]}
    manifest = SimpleNamespace(
        split_names=lambda: list(splits),
        split=lambda name: [SimpleNamespace(file=key) for key, _ in splits[name]],
        path_of=lambda record: tmp_path / "img" / record.file,
    )
    monkeypatch.setattr("captioner.features.extract.load_backbone", lambda *a: tiny_backbone())
    reports = extract_manifest(manifest, tmp_path / "feat", num_workers=0, progress=False)  # type: ignore[arg-type]
    assert {k: r.extracted_now for k, r in reports.items()} == {"train": 3, "val": 2}
    assert FeatureCache.open(tmp_path / "feat" / "val").keys == ["img03.png", "img04.png"]
    with pytest.raises(Exception, match="unknown split"):
        extract_manifest(manifest, tmp_path / "feat", splits=["test"])  # type: ignore[arg-type]
