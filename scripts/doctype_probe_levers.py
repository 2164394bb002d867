"""Two levers for model 1 tried as linear probes (docs/RESULTS.md, ninth session).

1. "Style" statistics: the per-channel mean and standard deviation of MobileNetV2's blocks 3, 6,
   10, 13 and 16 (AdaIN's description of an image's style, 752 numbers) beside the pooled
   final features.
2. Content-matched stylised photos: every training photo also as a painting-like image (median
   and mode filters, posterised, saturated) labelled Painting and as a pencil sketch (colour
   dodge of the inverted, blurred grey image) labelled Sketch, so that content alone cannot
   tell the classes apart.

The probe: the same sources, seeds and test splits as `captioner classify train` (sources held
out by group), drawn supplements included; a linear head on unit-length, standardised features
of the clean and one scan-augmented view, source-balanced loss, 60 epochs, no selection; test
macro-F1 clean and with sigma 25 noise.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/doctype_probe_levers.py --work runs/probe
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from captioner.data.drawn_kinds import write_supplements
from captioner.data.labelled import assign_splits, read_sources
from captioner.doctype.augment import NoiseView, ScanAugment
from captioner.doctype.metrics import classification_metrics
from captioner.errors import ImageLoadError
from captioner.training.classifier import sample_weights
from captioner.vision.backbones import load_backbone
from captioner.vision.images import load_image

TAPS = (3, 6, 10, 13, 16)
VIEWS = {"clean": None, "noise_25": NoiseView(25.0), "aug0": ScanAugment(view=0)}


def painting_like(image: Image.Image) -> Image.Image:
    image = image.filter(ImageFilter.MedianFilter(5)).filter(ImageFilter.ModeFilter(5))
    image = ImageEnhance.Color(ImageOps.posterize(image, 4)).enhance(1.4)
    return image.filter(ImageFilter.SMOOTH_MORE)


def pencil_sketch(image: Image.Image) -> Image.Image:
    grey = ImageOps.grayscale(image)
    blurred = ImageOps.invert(grey).filter(ImageFilter.GaussianBlur(max(2, image.width // 60)))
    a, b = np.asarray(grey, np.float32), np.asarray(blurred, np.float32)
    dodge = np.clip(a * 255.0 / np.maximum(255.0 - b, 1), 0, 255).astype(np.uint8)
    return Image.fromarray(dodge).convert("RGB")


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], view, transform) -> None:
        self.paths, self.view, self.transform = paths, view, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.paths[i])
        except ImageLoadError:
            return torch.zeros(3, 224, 224), False
        if self.view is not None:
            image = self.view(image)
        return self.transform(image), True


def features(paths: list[str], out: Path, view_name: str) -> dict[str, np.ndarray]:
    """Pooled final features and style statistics of ``paths`` (cached in ``out``)."""
    if out.exists():
        return dict(np.load(out))
    backbone = load_backbone("mobilenet_v2")
    images = _Images(paths, VIEWS[view_name], backbone.transform)
    finals, styles, oks = [], [], []
    with torch.inference_mode():
        for x, ok in torch.utils.data.DataLoader(images, batch_size=32, num_workers=1):
            stats = []
            for k, block in enumerate(backbone.trunk):
                x = block(x)
                if k in TAPS:
                    stats += [x.mean((2, 3)), x.std((2, 3))]
            finals.append(x.mean((2, 3)).numpy())
            styles.append(torch.cat(stats, 1).numpy())
            oks.append(ok.numpy())
    arrays = {
        "final": np.concatenate(finals),
        "style": np.concatenate(styles),
        "ok": np.concatenate(oks),
    }
    np.savez(out, **arrays)
    print(f"{out}: {len(paths)} images", flush=True)
    return arrays


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)


def vectors(arrays: dict[str, np.ndarray], kind: str) -> np.ndarray:
    if kind == "final":
        return _unit(arrays["final"])
    return np.concatenate([_unit(arrays["final"]), _unit(arrays["style"])], 1)


def probe(rows, classes, seed: int, epochs: int = 60):
    """The trained head and the standardisation it reads."""
    x = torch.tensor(np.concatenate([r[0] for r in rows]))
    y = torch.tensor(np.concatenate([r[1] for r in rows]))
    sources = [r[2] for r in rows for _ in r[1]]
    weight = sample_weights(y, sources, len(classes), "source")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(classes))
    optimiser = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 256):
            j = order[start : start + 256]
            logits = head(torch.nn.functional.dropout(x[j], 0.5))
            loss = torch.nn.functional.cross_entropy(
                logits, y[j], reduction="none", label_smoothing=0.1
            )
            optimiser.zero_grad()
            (loss * weight[j]).mean().backward()
            optimiser.step()
    return head, mean, std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--work", type=Path, default=Path("runs/probe"))
    args = parser.parse_args()
    d = args.data
    sources = [
        f"{d}/doctypes",
        f"Photo={d}/ucm-captions/images",
        f"Photo={d}/vietnamese-captions/images",
        f"Photo={d}/flickr8k-mini/Images",
    ]
    args.work.mkdir(parents=True, exist_ok=True)
    data = read_sources(sources, max_per_group=300)
    classes = data.classes
    drawn = write_supplements(args.work / "drawn", 150, classes)
    photos = [i.path for i in data.images if i.label == "Photo"]
    styled: list[tuple[str, str, str]] = []  # (path, label, source photo)
    for kind, make in (("Painting", painting_like), ("Sketch", pencil_sketch)):
        (args.work / "styled" / kind).mkdir(parents=True, exist_ok=True)
        for n, path in enumerate(photos):
            out = args.work / "styled" / kind / f"{n:05d}.jpg"
            if not out.exists():
                image = load_image(path)
                image.thumbnail((512, 512))
                make(image).save(out, quality=92)
            styled.append((out.as_posix(), kind, path))
    paths = [i.path for i in data.images] + [p.as_posix() for p, _ in drawn]
    feats = {v: features(paths, args.work / f"{v}.npz", v) for v in VIEWS}
    styled_feats = {
        v: features([p for p, _, _ in styled], args.work / f"styled_{v}.npz", v)
        for v in ("clean", "aug0")
    }
    index = {p: i for i, p in enumerate(paths)}
    for kind, with_styled in (("final", False), ("both", False), ("final", True), ("both", True)):
        scores: dict[str, list[float]] = {"clean": [], "noise_25": []}
        for seed in (0, 1, 2):
            assign_splits(data, by="group", val_fraction=0.15, test_fraction=0.25, seed=seed)
            train = [i for i in data.images if i.split == "train"]
            rows = []
            for view in ("clean", "aug0"):
                vec, ok = vectors(feats[view], kind), feats[view]["ok"]
                for item in train:
                    k = index[item.path]
                    if ok[k]:
                        rows.append((vec[k : k + 1], [classes.index(item.label)], item.group))
                for p, label in drawn:
                    k = index[p.as_posix()]
                    rows.append((vec[k : k + 1], [classes.index(label)], "drawn"))
                if with_styled:
                    in_train = {i.path for i in train}
                    vec = vectors(styled_feats[view], kind)
                    for k, (_, label, source) in enumerate(styled):
                        if source in in_train:
                            rows.append((vec[k : k + 1], [classes.index(label)], "styled"))
            rows = [(r[0].astype(np.float32), np.asarray(r[1]), r[2]) for r in rows]
            head, mean, std = probe(rows, classes, seed)
            test = [i for i in data.images if i.split == "test"]
            for view in scores:
                keep = [i for i in test if feats[view]["ok"][index[i.path]]]
                x = torch.tensor(vectors(feats[view], kind)[[index[i.path] for i in keep]])
                labels = np.asarray([classes.index(i.label) for i in keep])
                with torch.no_grad():
                    p = head((x - mean) / std).softmax(1).numpy()
                scores[view].append(classification_metrics(labels, p, classes)["macro_f1"])
        name = ("final + style" if kind == "both" else "final") + (
            " + stylised photos" if with_styled else ""
        )
        for view, values in scores.items():
            print(
                f"{name:32s} {view:9s} test macro-F1 {np.mean(values):.3f} ± "
                f"{np.std(values, ddof=1):.3f}  seeds {', '.join(f'{v:.3f}' for v in values)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
