"""Model 1, the document-type classifier: training, calibration, apply, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from doctype_tiny import photo, text_page, write_kinds
from safetensors.torch import load_file

from captioner.cli import main
from captioner.doctype.apply import sort_file
from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
)
from captioner.errors import CheckpointError
from captioner.vision.backbones import offline_mobilenet_weights

pytestmark = pytest.mark.skipif(
    offline_mobilenet_weights() is None, reason="offline MobileNetV2 weights not installed"
)


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "classify",
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--views",
            "1",
            "--epochs",
            "12",
            "--patience",
            "12",
            "--workers",
            "0",
            "--no-progress",
            "--synthetic",
            "0",
            *extra,
        ]
    )


def _cache(run: Path, view: str) -> Path:
    """A run's feature cache of ``view`` (under features/, or features/style-*/ when the head
    reads style statistics)."""
    (found,) = run.glob(f"features/**/{view}/header.json")
    return found.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doctype")
    write_kinds(root / "kinds", per_source=6, sources=3)
    (root / "kinds" / "Text" / "src0-0999.jpg").write_bytes(b"not a picture")  # skipped
    assert _train(root / "kinds", root / "run") == 0
    return root / "run"


def test_training_learns_text_from_photos_on_unseen_sources(trained: Path) -> None:
    report = json.loads((trained / "report.json").read_text())
    data = json.loads((trained / "data.json").read_text())
    test_groups = {(i["label"], i["group"]) for i in data["images"] if i["split"] == "test"}
    seen = {(i["label"], i["group"]) for i in data["images"] if i["split"] in ("train", "val")}
    assert test_groups and not test_groups & seen  # test sources are unseen in training
    assert report["test"]["clean"]["accuracy"] >= 0.9
    assert report["test"]["noise_25"]["accuracy"] >= 0.8
    assert report["val"]["clean"]["images"] > 0
    failures = json.loads((_cache(trained, "clean") / "failures.json").read_text())
    assert [Path(k).name for k in failures] == ["src0-0999.jpg"]  # named, skipped, not fatal
    for split in ("val", "test"):  # the unreadable file is in no figure
        readable = [i for i in data["images"] if i["split"] == split and i["path"] not in failures]
        assert report[split]["clean"]["images"] == len(readable)
    for name in ("model.safetensors", "config.json"):
        assert (trained / "model" / name).is_file()
    config = json.loads((trained / "model" / "config.json").read_text())
    assert config["format"] == "captioner-doctype"
    assert config["model"]["classes"] == ["Photo", "Text"]
    assert config["model"]["temperature"] > 0
    assert (trained / "history.json").is_file() and (trained / "train_config.json").is_file()
    assert any((trained / "tensorboard").iterdir())


def test_python_api_classifies_new_images(trained: Path) -> None:
    classifier = DocTypeClassifier.from_pretrained(trained)
    predictions = classifier([text_page(4242), photo(4243), text_page(4244)])
    assert [p.kind for p in predictions] == ["Text", "Photo", "Text"]
    for p in predictions:
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5
        assert p.is_photo == (p.kind == "Photo")
    assert "not a photo" in predictions[0].describe()


def test_a_smaller_input_size_is_saved_loaded_and_checked(tmp_path: Path) -> None:
    from captioner.doctype.classifier import check_backbone
    from captioner.vision.backbones import load_backbone

    write_kinds(tmp_path / "kinds", per_source=4, sources=3)
    assert _train(tmp_path / "kinds", tmp_path / "run", "--image-size", "96") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["test"]["clean"]["accuracy"] >= 0.8  # still learns text from photos
    classifier = DocTypeClassifier.from_pretrained(tmp_path / "run")
    assert classifier.config.image_size == 96
    assert classifier.backbone is not None and classifier.backbone.preprocessing.image_size == 96
    assert [p.kind for p in classifier([text_page(7), photo(8)])] == ["Text", "Photo"]
    header = json.loads((_cache(tmp_path / "run", "clean") / "header.json").read_text())
    assert header["preprocessing"]["image_size"] == 96  # no 224-px cache reused
    with pytest.raises(CheckpointError, match="96-px"):
        check_backbone(classifier.config, load_backbone("mobilenet_v2"), tmp_path / "run")


def test_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    write_kinds(tmp_path / "kinds", per_source=4, sources=3)
    common = ["--epochs", "6", "--patience", "6", "--synthetic", "2"]
    assert _train(tmp_path / "kinds", tmp_path / "whole", *common) == 0
    assert _train(tmp_path / "kinds", tmp_path / "parts", *common[2:], "--epochs", "3") == 0
    data = json.loads((tmp_path / "parts" / "data.json").read_text())
    drawn = [i for i in data["images"] if i["group"] == "synth"]
    assert len(drawn) == 2 and {i["split"] for i in drawn} == {"train"}  # a drawn page each
    assert (
        main(
            [
                "classify",
                "train",
                "--out",
                str(tmp_path / "parts"),
                "--resume",
                "--epochs",
                "6",
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    state = [
        load_file(str(tmp_path / r / "checkpoint" / "state.safetensors"))
        for r in ("whole", "parts")
    ]
    assert state[0].keys() == state[1].keys()
    for key in state[0]:
        assert np.array_equal(state[0][key].numpy(), state[1][key].numpy()), key
    histories = [
        json.loads((tmp_path / r / "history.json").read_text()) for r in ("whole", "parts")
    ]
    assert [h["val_nll"] for h in histories[0]] == [h["val_nll"] for h in histories[1]]
    # other settings than the run started with are refused
    code = main(
        [
            "classify",
            "train",
            "--out",
            str(tmp_path / "parts"),
            "--resume",
            "--lr",
            "0.5",
            "--no-progress",
        ]
    )
    assert code == 2


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    true_t = 2.5
    p = np.exp(logits / true_t)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(logits, labels)
    assert abs(t - true_t) < 0.25
    raw = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert expected_calibration_error(labels, p) < expected_calibration_error(labels, raw) / 2


def test_metrics_photo_vs_rest_and_f1() -> None:
    classes = ["Painting", "Photo", "Text"]
    labels = np.array([1, 1, 1, 1, 0, 2, 2, 0])
    probs = np.eye(3)[[1, 1, 1, 0, 0, 2, 1, 0]] * 0.9 + 0.1 / 3
    report = classification_metrics(labels, probs, classes)
    assert report["accuracy"] == pytest.approx(6 / 8)
    pvr = report["photo_vs_rest"]
    assert pvr["photos_kept"] == pytest.approx(3 / 4)
    assert pvr["non_photos_let_through"] == pytest.approx(1 / 4)
    assert report["per_class"]["Text"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert report["confusion"][1] == [1, 3, 0]


def test_apply_copies_and_moves_into_kind_folders_without_overwriting(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    text_page(7001).save(inbox / "a.jpg")
    photo(7002).save(inbox / "b.jpg")
    sorted_dir = tmp_path / "sorted"
    (sorted_dir / "Text").mkdir(parents=True)
    (sorted_dir / "Text" / "a.jpg").write_bytes(b"someone else's file")
    args = ["classify", "apply", str(inbox), "--model", str(trained), "--json", "--no-progress"]
    assert main([*args, "--copy-to", str(sorted_dir), "--workers", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(Path(r["path"]).name, r["kind"]) for r in rows] == [
        ("a.jpg", "Text"),
        ("b.jpg", "Photo"),
    ]
    assert (sorted_dir / "Text" / "a.jpg").read_bytes() == b"someone else's file"
    assert (sorted_dir / "Text" / "a-1.jpg").read_bytes() == (inbox / "a.jpg").read_bytes()
    assert (sorted_dir / "Photo" / "b.jpg").is_file()
    # a re-run (e.g. after a kill) copies nothing twice
    assert main([*args, "--copy-to", str(sorted_dir), "--workers", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(r["already_sorted"] for r in rows)
    assert sorted(p.name for p in (sorted_dir / "Text").iterdir()) == ["a-1.jpg", "a.jpg"]
    # move: the inbox empties, the sorted copies are the same bytes
    moved = tmp_path / "moved"
    assert main([*args, "--move-to", str(moved), "--workers", "0"]) == 0
    capsys.readouterr()
    assert not list(inbox.iterdir())
    assert (moved / "Text" / "a.jpg").read_bytes() == (sorted_dir / "Text" / "a-1.jpg").read_bytes()


def test_sort_file_never_overwrites(tmp_path: Path) -> None:
    source = tmp_path / "x.jpg"
    source.write_bytes(b"new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.jpg").write_bytes(b"old")
    (tmp_path / "out" / "x-1.jpg").write_bytes(b"older")
    placed, done = sort_file(source, tmp_path / "out", move=False)
    assert placed.name == "x-2.jpg" and done and placed.read_bytes() == b"new"
    assert (tmp_path / "out" / "x.jpg").read_bytes() == b"old"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_apply_csv_threshold_and_bad_images(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fault_corpus import BAD_IMAGES, GOOD_IMAGES, write_image_corpus

    names = [n for n in BAD_IMAGES if n != "bomb.png"] + GOOD_IMAGES
    write_image_corpus(tmp_path / "mixed", names)
    out = tmp_path / "kinds.csv"
    code = main(
        [
            "classify",
            "apply",
            str(tmp_path / "mixed"),
            "--model",
            str(trained),
            "--csv",
            "--output",
            str(out),
            "--photo-threshold",
            "0.99",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert code == 1  # some files failed
    err = capsys.readouterr().err
    for name in names:
        if name in BAD_IMAGES:
            assert name in err
    rows = list(__import__("csv").DictReader(out.open()))
    assert {Path(r["path"]).name for r in rows} == set(names)
    good = [r for r in rows if not r["error"]]
    assert {Path(r["path"]).name for r in good} == set(GOOD_IMAGES)
    for r in good:  # the kind follows the photo decision at the given threshold
        said_photo = float(r["photo_probability"]) >= 0.99
        assert r["is_photo"] == str(said_photo) and (r["kind"] == "Photo") == said_photo


def test_other_model_folders_are_refused_with_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "cap"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "captioner-model", "version": 1}))
    with pytest.raises(CheckpointError, match="this is a captioner model, not a document-type"):
        DocTypeClassifier.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"format": "captioner-denoiser"}))
    with pytest.raises(CheckpointError, match="denoiser"):
        DocTypeClassifier.from_pretrained(folder)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioner.cli",
            "classify",
            "apply",
            str(tmp_path),
            "--model",
            str(folder),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "denoiser" in result.stderr


def test_evaluate_writes_report_confusion_and_mistakes(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "classify",
            "evaluate",
            "--model",
            str(trained),
            "--split-file",
            str(trained / "data.json"),
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["reports"]) == {"clean", "noise_25"}
    assert report["reports"]["clean"]["images"] > 0
    assert (out / "confusion_clean.png").stat().st_size > 1000
    assert (out / "mistakes.html").read_text().startswith("<!doctype html>")


def test_source_balanced_weights_give_every_source_and_class_the_same_share() -> None:
    import torch

    from captioner.training.classifier import sample_weights

    labels = torch.tensor([0] * 90 + [0] * 10 + [1] * 20)
    groups = ["big"] * 90 + ["small"] * 10 + ["only"] * 20
    w = sample_weights(labels, groups, 2, "source")
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[:90].sum()) == pytest.approx(float(w[90:100].sum()))  # sources equal
    assert float(w[:100].sum()) == pytest.approx(float(w[100:].sum()))  # classes equal
    c = sample_weights(labels, groups, 2, "class")
    assert float(c[0]) == pytest.approx(float(c[95]))  # inside a class, images equal
    assert float(c[:100].sum()) == pytest.approx(float(c[100:].sum()))


def test_fine_tuning_the_last_blocks_trains_them_and_the_folder_carries_them(
    tmp_path: Path,
) -> None:
    import torch

    from captioner.vision.backbones import load_backbone

    write_kinds(tmp_path / "kinds", per_source=4, sources=3)
    out = tmp_path / "run"
    assert (
        _train(tmp_path / "kinds", out, "--fine-tune-blocks", "2", "--fine-tune-epochs", "2") == 0
    )
    model = out / "model"
    saved = load_file(str(model / "backbone.safetensors"))
    stock = load_backbone("mobilenet_v2").trunk.state_dict()
    changed = {k.split(".")[0] for k in saved if not torch.equal(saved[k], stock[k])}
    assert changed == {"17", "18"}  # the last two blocks, nothing before
    assert all(torch.equal(saved[k], stock[k]) for k in saved if "running_" in k)
    config = json.loads((model / "config.json").read_text())
    assert config["training"]["fine_tuned_blocks"] == 2
    classifier = DocTypeClassifier.from_pretrained(model)  # its own backbone
    assert classifier.backbone is not None
    assert classifier.backbone.weights_id == config["model"]["backbone_weights_id"]
    kinds = [p.kind for p in classifier([photo(900), text_page(901)])]
    assert kinds == ["Photo", "Text"]
    history = json.loads((out / "fine_tune" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    with pytest.raises(CheckpointError, match="weights"):  # the stock backbone is refused
        DocTypeClassifier.from_pretrained(model, backbone=load_backbone("mobilenet_v2"))


def test_style_statistics_are_trained_saved_and_read_from_the_same_pass(tmp_path: Path) -> None:
    import torch

    from captioner.doctype.features import StyleTaps, describe, pooled_backbone
    from captioner.errors import CaptionerError
    from captioner.vision.backbones import load_backbone

    write_kinds(tmp_path / "kinds", per_source=4, sources=3)
    out = tmp_path / "run"
    assert _train(tmp_path / "kinds", out, "--style-blocks", "6,3") == 0
    header = json.loads((out / "features" / "style-3-6" / "clean" / "header.json").read_text())
    assert header["style_blocks"] == [3, 6] and header["channels"] == 1280 + 2 * (24 + 32)
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["clean"]["accuracy"] >= 0.8
    classifier = DocTypeClassifier.from_pretrained(out)
    assert classifier.config.style_blocks == [3, 6] and classifier.config.style_channels == 112
    assert [p.kind for p in classifier([text_page(17), photo(18)])] == ["Text", "Photo"]

    # What the chain does with a shared backbone: the grid and the statistics of one pass, in
    # two batches, give the probabilities of the cached whole-image descriptor.
    backbone = load_backbone("mobilenet_v2")
    pictures = [text_page(21), photo(22), photo(23)]
    pixels = torch.stack([backbone.transform(p) for p in pictures])
    with torch.inference_mode():
        with classifier.taps(backbone) as taps:
            grid = torch.cat([backbone(pixels[:2]), backbone(pixels[2:])])
        style = taps.take()
        whole = pooled_backbone(backbone, [3, 6])(pixels)[:, 0]
    assert torch.allclose(describe(grid, style), whole, atol=1e-4)
    shared = classifier.predict_grid(grid, style)
    assert [p.kind for p in shared] == [p.kind for p in classifier(pictures)]
    with pytest.raises(CaptionerError, match="style statistics"):
        classifier.predict_grid(grid)  # the grid alone is not what this head reads
    with StyleTaps(backbone.trunk, []) as none:
        assert none.take() is None  # a head without style statistics needs nothing taken

    with pytest.raises(CaptionerError, match="blocks 0 to 18"):
        from captioner.doctype.features import resolve_style_blocks

        resolve_style_blocks("3,19", backbone)
    assert _train(tmp_path / "kinds", tmp_path / "bad", "--style-blocks", "x") == 2


def test_style_statistics_with_fine_tuned_blocks_match_the_whole_network(
    tmp_path: Path,
) -> None:
    """Block 3 before the cut (its statistics from the first phase's caches), block 17 among
    the two tuned ones (from the tuned blocks): the saved classifier, run on the image files
    through its whole fine-tuned backbone, gives the test figures training computed."""
    from captioner.data.labelled import LabelledSet
    from captioner.doctype.evaluate import evaluate_classifier

    write_kinds(tmp_path / "kinds", per_source=4, sources=3)
    out = tmp_path / "run"
    extra = ["--style-blocks", "3,17", "--fine-tune-blocks", "2", "--fine-tune-epochs", "2"]
    assert _train(tmp_path / "kinds", out, *extra) == 0
    classifier = DocTypeClassifier.from_pretrained(out)
    assert classifier.config.style_blocks == [3, 17]
    assert classifier.config.style_channels == 2 * (24 + 320)
    items = LabelledSet.load(out / "data.json").split("test")
    evaluation = evaluate_classifier(classifier, items, (), num_workers=0, progress=False)
    trained = json.loads((out / "report.json").read_text())["test"]["clean"]
    again = evaluation.reports["clean"]
    assert again["images"] == trained["images"] > 0
    assert again["accuracy"] == trained["accuracy"]


def test_tuned_blocks_on_cached_prefix_maps_describe_an_image_as_the_whole_network() -> None:
    """What the fine-tuning phase computes from cached prefix maps and the prefix's cached
    style statistics equals what the saved network computes from the pixels, after the top
    blocks have changed."""
    import torch

    from captioner.doctype.features import pooled_backbone
    from captioner.doctype.model import DocTypeHead
    from captioner.training.classifier_finetune import TunedClassifier
    from captioner.vision.backbones import load_backbone
    from captioner.vision.blocks import split_backbone

    backbone = load_backbone("mobilenet_v2").eval()
    pixels = torch.stack([backbone.transform(p) for p in (photo(31), text_page(32))])
    with torch.inference_mode():
        before = pooled_backbone(backbone, [3])(pixels)[:, 0]  # the first phase's cache
        stock = pooled_backbone(backbone, [3, 17])(pixels)[:, 0]
    prefix_style = before[:, 1280:]
    prefix, top = split_backbone(backbone, 2)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in top.parameters():
            weight.add_(0.05 * torch.randn_like(weight))  # "fine-tuned" blocks 17 and 18
    head = DocTypeHead(1280, 2, 0.0, 2 * (24 + 320))
    tuned = TunedClassifier(top, head, (int(prefix.grid[0]), int(prefix.grid[1])), [0])
    with torch.inference_mode():
        maps = prefix(pixels)
        from_cache = tuned.eval().pooled(maps, prefix_style)
        whole = pooled_backbone(backbone, [3, 17])(pixels)[:, 0]
    assert torch.allclose(from_cache, whole, atol=1e-4)
    assert not torch.allclose(whole, stock, atol=1e-2)  # the tuned blocks changed what it reads
