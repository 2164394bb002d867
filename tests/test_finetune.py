"""Fine-tuning the backbone's last blocks on cached prefix maps (training/finetune.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from captioner.caption.captioner import Captioner
from captioner.caption.config import DecoderShape
from captioner.caption.decode_settings import DecodeSettings
from captioner.cli import main
from captioner.data.manifest import ImageRecord, Manifest
from captioner.errors import CaptionerError, CheckpointError
from captioner.evaluation.split import caption_split
from captioner.features.cache import FeatureCache
from captioner.features.extract import extract_manifest
from captioner.training.config import TrainConfig
from captioner.training.trainer import train
from captioner.vision.backbones import load_backbone
from captioner.vision.blocks import grid_of_prefix, split_backbone, trunk_blocks
from captioner.vision.trunk_file import TRUNK_FILE

# MobileNetV2 (its offline ImageNet weights: random ones give vanishing maps) at 64 px, a 2x2
# grid; its last 2 blocks are fine-tuned
SIZE, TOP = 64, 2
WORDS = ["red field", "blue sea", "green forest", "grey road"]


def make_dataset(root: Path) -> Path:
    """Twelve pictures of four colours, captioned by colour; 8 train, 4 val."""
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 30, 200), (30, 170, 30), (120, 120, 120)]
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(12):
        kind = i % 4
        noise = rng.integers(-40, 40, (48, 48, 3))
        pixels = np.clip(np.array(colours[kind]) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"p{i:02d}.png")
        caption = f"a {WORDS[kind]}"
        records.append(ImageRecord(f"p{i:02d}.png", "train" if i < 8 else "val", [caption] * 2))
    manifest = Manifest(root / "images", records, {"format": "test"}, {})
    manifest.save(root / "manifest.json")
    return root / "manifest.json"


def config_of(root: Path, out: str, **kw: object) -> TrainConfig:
    settings: dict[str, object] = dict(
        manifest=str(root / "manifest.json"),
        features=str(root / "prefix"),
        out=str(root / out),
        epochs=3,
        batch_size=4,
        learning_rate=1e-2,
        backbone_learning_rate=1e-3,
        fine_tune_blocks=TOP,
        patience=10,
        progress=False,
        device="cpu",
        model=DecoderShape(encoder_dim=16, embed_dim=8, attention_dim=16, hidden_dim=16),
    )
    settings.update(kw)
    return TrainConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    manifest = Manifest.load(make_dataset(root))
    common = dict(image_size=SIZE, num_workers=0, progress=False)
    extract_manifest(manifest, root / "prefix", top_blocks=TOP, **common)  # type: ignore[arg-type]
    extract_manifest(manifest, root / "stock", **common)  # type: ignore[arg-type]
    return root


@pytest.fixture(scope="module")
def tuned(prepared: Path) -> Path:
    torch.manual_seed(0)
    return train(config_of(prepared, "run", epochs=50)).model_dir


def test_the_cut_backbone_gives_the_whole_backbones_grid() -> None:
    backbone = load_backbone("mobilenet_v2", "none", SIZE)
    prefix, top = split_backbone(backbone, 5)
    assert len(trunk_blocks(backbone.trunk)) == 19 and prefix.header()["top_blocks"] == 5
    assert (prefix.channels, prefix.grid) == (96, (4, 4))  # block 13's map at 64 px
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        whole, cut = backbone(pixels), grid_of_prefix(top, prefix(pixels), prefix.grid)
    torch.testing.assert_close(cut, whole, atol=1e-4, rtol=1e-4)
    with pytest.raises(CaptionerError, match="between 1 and 18"):
        split_backbone(backbone, 19)


def test_fine_tuning_changes_only_the_last_blocks(prepared: Path, tuned: Path) -> None:
    stock = load_backbone("mobilenet_v2", "DEFAULT", SIZE).trunk.state_dict()
    saved = load_file(str(tuned / TRUNK_FILE))
    assert saved.keys() == stock.keys()
    changed = {k.split(".")[0] for k in saved if not torch.equal(saved[k], stock[k])}
    # blocks 17 and 18 trained; batch-norm statistics (running mean/var) stayed
    assert changed == {"17", "18"}
    stats = [k for k in saved if "running_" in k]
    assert stats and all(torch.equal(saved[k], stock[k]) for k in stats)
    header = json.loads((tuned / "config.json").read_text())["backbone"]
    assert header["fine_tuned_blocks"] == TOP and header["grid"] == [2, 2]


def test_the_saved_model_captions_images_as_it_did_in_training(prepared: Path, tuned: Path) -> None:
    captioner = Captioner.from_pretrained(tuned)  # its own backbone: no weights to pass
    manifest = Manifest.load(prepared / "manifest.json")
    paths = [manifest.path_of(r) for r in manifest.split("val")]
    decode = DecodeSettings(beam_size=2)
    from_images = [r.caption for r in captioner.caption(paths, decode)]
    # the same captions from the prefix maps through the trained top blocks
    backbone = load_backbone("mobilenet_v2", str(tuned / TRUNK_FILE), SIZE)
    _, top = split_backbone(backbone, TOP)
    cache = FeatureCache.open(prepared / "prefix" / "val")
    prefix = torch.from_numpy(np.stack([cache.features(i) for i in range(4)]).astype(np.float32))
    h, w = cache.header["grid"]
    with torch.no_grad():
        grids = grid_of_prefix(top.eval(), prefix, (h, w))
    from_prefix = [r.caption for r in captioner.caption_features(grids, decode)]
    assert from_images == from_prefix
    assert len(set(from_images)) > 1  # it learned something: not one caption for all colours


def test_a_fine_tuned_model_refuses_stock_features_and_extract_model_gives_its_own(
    prepared: Path, tuned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captioner = Captioner.from_pretrained(tuned, backbone_weights=None)
    manifest = Manifest.load(prepared / "manifest.json")
    decode = DecodeSettings()
    with pytest.raises(CheckpointError, match="fine-tuned.*extract --model"):
        caption_split(captioner, manifest, prepared / "stock", "val", decode, progress=False)
    with pytest.raises(CheckpointError, match="last 2 blocks"):
        caption_split(captioner, manifest, prepared / "prefix", "val", decode, progress=False)
    out = prepared / "own"
    args = ["extract", "--manifest", str(prepared / "manifest.json"), "--out", str(out)]
    assert main([*args, "--model", str(tuned), "--splits", "val", "--no-progress"]) == 0
    captions = caption_split(captioner, manifest, out, "val", decode, progress=False)
    assert len(captions.results) == 4
    assert main([*args, "--model", str(tuned), "--backbone", "resnet50"]) != 0
    assert "--model says which backbone to use: drop --backbone" in capsys.readouterr().err


def test_resumed_fine_tuning_ends_with_the_weights_of_an_uninterrupted_run(
    prepared: Path,
) -> None:
    torch.manual_seed(0)
    whole = train(config_of(prepared, "whole", fine_tune_after=1))
    torch.manual_seed(0)
    train(config_of(prepared, "parts", fine_tune_after=1, epochs=2))
    parts = train(config_of(prepared, "parts", fine_tune_after=1), resume=True)
    for name in ("model.safetensors", TRUNK_FILE):
        a, b = load_file(str(whole.model_dir / name)), load_file(str(parts.model_dir / name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in whole.history] == [r["val_loss"] for r in parts.history]


def test_the_first_epochs_train_the_decoder_only_when_asked(prepared: Path) -> None:
    torch.manual_seed(0)
    result = train(config_of(prepared, "warm", epochs=1, fine_tune_after=1))
    stock = load_backbone("mobilenet_v2", "DEFAULT", SIZE).trunk.state_dict()
    saved = load_file(str(result.model_dir / TRUNK_FILE))
    assert all(torch.equal(saved[k], stock[k]) for k in saved)


def test_fine_tuning_refuses_caches_it_cannot_use(prepared: Path) -> None:
    with pytest.raises(CaptionerError, match="extract --top-blocks 2.*final grids"):
        train(config_of(prepared, "bad1", features=str(prepared / "stock")))
    with pytest.raises(CaptionerError, match="--fine-tune-blocks 2"):
        train(config_of(prepared, "bad2", fine_tune_blocks=0))
    with pytest.raises(CaptionerError, match="extract --top-blocks 3"):
        train(config_of(prepared, "bad3", fine_tune_blocks=3))
    with pytest.raises(CaptionerError, match="weights"):
        train(config_of(prepared, "bad4", backbone_weights="none"))
    with pytest.raises(CaptionerError, match="compile"):
        dataclasses.replace(config_of(prepared, "bad5"), compile=True)


def test_image_batches_keep_each_images_captions_together_under_one_view() -> None:
    from captioner.training.data import SplitData
    from captioner.training.finetune import ImageBatches, PrefixPairs, collate_prefix_pairs

    rows = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # pair -> image row
    sampler = ImageBatches(rows, batch_size=4, views=3, seed=7, shuffle=True)
    sampler.set_epoch(1)
    batches = list(sampler)
    pairs = [pair for batch in batches for pair, _ in batch]
    assert sorted(pairs) == list(range(len(rows)))  # every caption once per epoch
    for batch in batches:
        views = {}
        for pair, view in batch:
            assert views.setdefault(rows[pair], view) == view  # one view per image
    drawn = {(rows[p], v) for b in batches for p, v in b}
    assert {v for _, v in drawn} != {0}  # views are drawn (seed 7: not all plain)
    again = ImageBatches(rows, batch_size=4, views=3, seed=7, shuffle=True)
    again.set_epoch(1)
    assert list(again) == batches  # resumed runs draw the same
    again.set_epoch(2)
    assert list(again) != batches
    assert len(again) == len(list(again))  # the length is that of the epoch's own draw
    # the collated batch maps each caption to its own image's map
    caches = [_FakeCache(view) for view in range(4)]
    data = SplitData(rows, [[1, 5 + i, 2] for i in range(len(rows))], [])
    dataset = PrefixPairs(caches, data)  # type: ignore[arg-type]
    prefix, index, captions = collate_prefix_pairs([dataset[key] for key in batches[0]])
    for (pair, view), slot, caption in zip(batches[0], index.tolist(), captions, strict=True):
        assert prefix[slot, 0, 0].item() == 10 * rows[pair] + view
        assert caption[1].item() == 5 + pair
    assert len(prefix) == len({(rows[p], v) for p, v in batches[0]})
    # captions drawn alone: every caption once, in batches of exactly batch_size
    alone = ImageBatches(rows, batch_size=4, views=3, seed=7, shuffle=True, by_image=False)
    drawn_alone = list(alone)
    assert [len(b) for b in drawn_alone] == [4, 4, 2]
    assert sorted(p for b in drawn_alone for p, _ in b) == list(range(len(rows)))


class _FakeCache:
    """A cache whose row r under view v is filled with 10 r + v."""

    def __init__(self, view: int) -> None:
        self.view = view

    def features(self, row: int) -> np.ndarray:
        return np.full((4, 3), 10 * row + self.view, dtype=np.float16)


def test_an_ensemble_of_separately_fine_tuned_models_reads_each_ones_features(
    prepared: Path, tuned: Path
) -> None:
    from captioner.evaluation.split import evaluate_split

    torch.manual_seed(1)
    other = train(config_of(prepared, "other", epochs=2, seed=1)).model_dir
    features = {}
    for name, model in (("a", tuned), ("b", other)):
        features[name] = prepared / f"own-{name}"
        args = ["extract", "--manifest", str(prepared / "manifest.json"), "--splits", "val"]
        assert main([*args, "--out", str(features[name]), "--model", str(model)]) == 0
    manifest, decode = prepared / "manifest.json", DecodeSettings(beam_size=2)

    def captions(models: list[Path], dirs: list[Path]) -> dict[str, str]:
        report = evaluate_split(models, manifest, dirs, "val", decode, use_java=False)  # type: ignore[arg-type]
        return report.captions.hypotheses()

    alone = captions([tuned], [features["a"]])
    assert captions([tuned, tuned], [features["a"], features["a"]]) == alone
    both = captions([tuned, other], [features["a"], features["b"]])
    assert len(both) == 4
    with pytest.raises(CheckpointError, match="fine-tuned"):
        captions([tuned, other], [features["b"], features["a"]])  # each its own, in order
    with pytest.raises(CheckpointError, match="backbone mismatch"):
        captions([tuned, other], [features["a"]])  # one folder: they must share the backbone


def test_caption_cli_and_scst_take_a_fine_tuned_model_as_it_is(
    prepared: Path, tuned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from captioner.training.scst import ScstConfig, finetune

    manifest = prepared / "manifest.json"
    own = prepared / "own-all"
    assert (
        main(["extract", "--manifest", str(manifest), "--out", str(own), "--model", str(tuned)])
        == 0
    )
    config = ScstConfig(
        model=str(tuned),
        manifest=str(manifest),
        features=str(own),
        out=str(prepared / "scst"),
        epochs=1,
        samples=2,
        batch_images=4,
        max_length=6,
        eval_beam_size=1,
        progress=False,
    )
    model = finetune(config).model_dir
    assert (model / TRUNK_FILE).read_bytes() == (tuned / TRUNK_FILE).read_bytes()
    capsys.readouterr()
    picture = prepared / "images" / "p08.png"
    assert main(["caption", str(picture), "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["caption"].startswith("a ")
