"""The chain over a real mixed folder: throughput against the alternatives and the bound,
routing and caption quality, and the catalogue at 100,000 rows.

    OMP_NUM_THREADS=2 .venv/bin/python bench/pipeline.py \\
        --classifier runs/doctype-s0/model --denoiser runs/pipeline-models/denoiser/model \\
        --captioner runs/pipeline-models/ucm-run/model --manifest runs/pipeline-models/ucm.json \\
        --work runs/pipeline-bench --output runs/pipeline-bench/result.json

The mixed folder (``WORK/archive``) holds every image of ``DATA/doctypes`` (five kinds) and the
test photos of UCM-Captions (the captioner's test split); every third photo is replaced by a
copy with Gaussian noise sigma 25 (JPEG q95). Originals are symbolic links, not copies.

Throughput, each over the whole folder unless said:
- ``pipeline``: ``run_archive`` into a fresh catalogue (default settings: decoding in 2
  worker processes, batches of 32, denoising at the captioner's 224 px, beam 3), and the same
  with greedy decoding, with ``denoise_size="full"`` and with decoding in the main process;
- ``three commands``: ``captioner classify apply``, then ``captioner denoise apply`` on the
  files it called photos (full resolution: the command's only mode), then ``captioner
  caption`` on the denoised copies, one after the other as subprocesses (start-up included);
- ``seed-style loop``: one image at a time through each model (classifier, then denoiser at
  full resolution and captioner for photos), over an evenly spaced subset (``--loop-images``);
- ``bound``: the backbone's and the denoiser's raw forward passes on the same images (already
  decoded and resized, in the pipeline's passes of 8 images): the backbone over every image,
  and for the photos the pipeline routed, the denoiser at 224 px and the backbone again on
  the denoised pixels.

All of them run in ``--repeats`` interleaved rounds (a busy spell of a shared machine then hits
each of them), and the fastest run of each is reported, with the CPU seconds it used (this
process and its ended children: decoding workers, the commands) and the times of every run.

Scans (``--scans N``): N files of the folder (half photos) resized to an A4 page at 300 dpi
(2480 x 3508 px, JPEG q90), through the same variants: the case the chain is built for.

Routing: on the whole folder and on the classifier's held-out sources (its ``data.json`` test
split, when given with ``--classifier-data``). Captions: BLEU-4/CIDEr of the UCM test photos
through the chain (``caption_all``, so routing misses do not hide quality), clean, and with
sigma 25 noise at the native 256 px and on 3x upscaled "scans" (768 px), without a denoiser,
denoised at 224 px, and (768 px) denoised at full resolution. Catalogue: ``--rows`` synthetic
rows (captions drawn from the UCM references): insert time, database size, search latency,
review-page size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captioner.caption.captioner import Captioner
from captioner.caption.decode_settings import DecodeSettings
from captioner.data.manifest import Manifest
from captioner.denoise.denoiser import load_denoiser
from captioner.doctype.classifier import DocTypeClassifier
from captioner.evaluation.metrics import compute_metrics
from captioner.fileio import atomic_write_json
from captioner.pipeline.catalogue import Catalogue
from captioner.pipeline.chain import CPU_FORWARD_BATCH, Pipeline, resized_pixels
from captioner.pipeline.page import write_review_page
from captioner.pipeline.run import run_archive
from captioner.pipeline.settings import PipelineSettings
from captioner.vision.images import load_image

SIGMA = 25.0
CLI = [sys.executable, "-m", "captioner.cli"]


def noisy(image: Image.Image, rng: np.random.Generator, sigma: float = SIGMA) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def build_archive(data: Path, manifest: Manifest, folder: Path, every: int = 1) -> dict[str, str]:
    """The mixed folder (every ``every``-th source); returns path -> true class."""
    rng = np.random.default_rng(0)
    truth: dict[str, str] = {}
    if folder.exists():
        shutil.rmtree(folder)
    sources = [(p, p.parent.name) for p in sorted((data / "doctypes").glob("*/*.jpg"))]
    sources += [(manifest.path_of(r), "Photo") for r in manifest.split("test")]
    sources = sources[::every]
    photo_count = 0
    for source, label in sources:
        where = "doctypes/" + label if source.parent.parent.name == "doctypes" else "ucm"
        target = folder / where / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if label == "Photo":
            photo_count += 1
        if label == "Photo" and photo_count % 3 == 0:
            target = target.with_name(f"noisy-{source.stem}.jpg")
            noisy(load_image(source), rng).save(target, quality=95)
        else:
            target.symlink_to(source.resolve())
        truth[str(target.absolute())] = label
    return truth


def load_models(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    captioner = Captioner.from_pretrained(args.captioner)
    classifier = DocTypeClassifier.from_pretrained(args.classifier, backbone=captioner.backbone)
    return classifier, load_denoiser(args.denoiser), captioner


def timed_pipeline(
    models: tuple[Any, Any, Any], inputs: list[Path], out: Path, **settings: Any
) -> tuple[float, dict[str, dict[str, Any]]]:
    if out.exists():
        shutil.rmtree(out)
    pipeline = Pipeline(*models, PipelineSettings(**settings))
    started = time.perf_counter()
    summary = run_archive(pipeline, inputs, out, page=False, progress=False)
    seconds = time.perf_counter() - started
    with Catalogue.open(out, readonly=True) as catalogue:
        rows = {r["path"]: r for r in catalogue.rows()}
    assert summary.files == len(rows), (summary.files, len(rows))
    return seconds, rows


def three_commands(args: argparse.Namespace, archive: Path, out: Path) -> dict[str, Any]:
    """classify apply -> denoise apply (photos) -> caption, as a user would run them."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    steps: dict[str, float] = {}

    def run(name: str, command: list[str]) -> None:
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        steps[name] = time.perf_counter() - started
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")

    kinds = out / "kinds.jsonl"
    run("classify apply", [*CLI, "classify", "apply", str(archive), "--recursive", "--model",
                           str(args.classifier), "--json", "--output", str(kinds),
                           "--no-progress"])  # fmt: skip
    photos = [
        row["path"]
        for row in map(json.loads, kinds.read_text().splitlines())
        if row.get("is_photo")
    ]
    # denoise apply keeps names: photos of the same name in two folders go to two runs
    by_name: dict[str, list[str]] = {}
    for path in photos:
        by_name.setdefault(Path(path).name, []).append(path)
    groups: list[list[str]] = []
    for paths in by_name.values():
        for i, path in enumerate(paths):
            if len(groups) <= i:
                groups.append([])
            groups[i].append(path)
    for i, group in enumerate(groups):
        run(f"denoise apply {i}", [*CLI, "denoise", "apply", *group, "--model",
                                   str(args.denoiser), "--out", str(out / f"denoised{i}"),
                                   "--no-progress"])  # fmt: skip
    denoised = [str(out / f"denoised{i}") for i in range(len(groups))]
    if denoised:  # (a classifier that calls nothing a photo leaves nothing to caption)
        run("caption", [*CLI, "caption", *denoised, "--model", str(args.captioner), "--json",
                        "--output", str(out / "captions.json")])  # fmt: skip
    return {"steps_s": {k: round(v, 1) for k, v in steps.items()}, "photos": len(photos)}


@torch.inference_mode()
def seed_loop(models: tuple[Any, Any, Any], paths: list[Path]) -> dict[str, Any]:
    """One image at a time through each model, as the seed's notebook chains them."""
    classifier, denoiser, captioner = models
    started = time.perf_counter()
    captioned = 0
    for path in paths:
        image = load_image(path)
        prediction = classifier([image])[0]
        if prediction.is_photo:
            captioner.caption([denoiser(image)], DecodeSettings(beam_size=3))
            captioned += 1
    return {"images": len(paths), "captioned": captioned, "seconds": time.perf_counter() - started}


@torch.inference_mode()
def bound(models: tuple[Any, Any, Any], paths: list[Path], routed: set[str]) -> dict[str, Any]:
    """Raw forward passes of the backbone (all images) and of the denoiser + backbone (the
    routed photos), on pixels decoded and resized beforehand."""
    classifier, denoiser, captioner = models
    backbone = captioner.backbone.to(memory_format=torch.channels_last)
    pixels = torch.stack([resized_pixels(load_image(p), 224) for p in paths])
    mean, std = backbone.preprocessing.mean, backbone.preprocessing.std
    import torchvision.transforms.functional as TF

    def forward(batch: torch.Tensor) -> torch.Tensor:
        x = TF.normalize(batch.float().div(255), list(mean), list(std))
        return backbone(x.contiguous(memory_format=torch.channels_last))

    def run(fn: Any, data: torch.Tensor) -> float:
        started = time.perf_counter()
        for start in range(0, len(data), CPU_FORWARD_BATCH):  # the pipeline's passes on a CPU
            fn(data[start : start + CPU_FORWARD_BATCH])
        return time.perf_counter() - started

    photo_rows = [i for i, p in enumerate(paths) if str(p) in routed]
    photo_pixels = pixels[photo_rows]
    t_backbone = run(forward, pixels)
    t_denoise = run(lambda b: denoiser.denoise_tensor(b.float().div(255)), photo_pixels)
    t_again = run(forward, photo_pixels)
    total = t_backbone + t_denoise + t_again
    return {
        "photos": len(photo_rows),
        "backbone_s": t_backbone,
        "denoiser_s": t_denoise,
        "backbone_on_denoised_s": t_again,
        "forward_seconds": total,
    }


def routing(rows: dict[str, dict[str, Any]], truth: dict[str, str], keep: set[str] | None) -> dict:
    items = [(p, t) for p, t in truth.items() if keep is None or p in keep]
    photos = [p for p, t in items if t == "Photo"]
    others = [p for p, t in items if t != "Photo"]
    return {
        "files": len(items),
        "photos": len(photos),
        "photos_captioned": sum(rows[p]["captioned"] for p in photos) / max(1, len(photos)),
        "non_photos_not_captioned": sum(not rows[p]["captioned"] for p in others)
        / max(1, len(others)),
        "kind_accuracy": sum(rows[p]["kind"] == t for p, t in items) / max(1, len(items)),
        "failed": sum(rows[p]["error"] is not None for p, _ in items),
    }


def held_out(classifier_data: Path | None, archive: Path, truth: dict[str, str]) -> set[str]:
    """Archive paths whose source is in the classifier's test split (unseen in training)."""
    if classifier_data is None:
        return set()
    data = json.loads(classifier_data.read_text())
    test = {Path(i["path"]).resolve() for i in data["images"] if i["split"] == "test"}
    names = {p.name for p in test}
    out = set()
    for path in truth:
        link = Path(path)
        source = link.resolve() if link.is_symlink() else None
        if source is not None and source in test:
            out.add(path)
        elif source is None and link.name.removeprefix("noisy-") in names:
            out.add(path)  # noisy copies of held-out photos
    return out


def quality(models: tuple[Any, Any, Any], manifest: Manifest, work: Path) -> dict[str, Any]:
    """UCM test photos through the chain (caption_all), clean and noisy, with and without
    the denoiser, at 256 px and as 768 px scans."""
    rng = np.random.default_rng(1)
    records = manifest.split("test")
    references = {r.file: r.captions for r in records}
    sets: dict[str, Path] = {}
    for name, scale, sigma in (("clean", 1, 0.0), ("noisy256", 1, SIGMA), ("noisy768", 3, SIGMA)):
        folder = work / "quality" / name
        sets[name] = folder
        if folder.is_dir() and len(list(folder.iterdir())) == len(records):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for r in records:
            image = load_image(manifest.path_of(r))
            if scale > 1:
                image = image.resize((image.width * scale, image.height * scale), Image.BICUBIC)
            if sigma:
                image = noisy(image, rng, sigma)
            image.save(folder / f"{Path(r.file).stem}.png")
    classifier, denoiser, captioner = models
    runs = {
        "clean": ("clean", None, "input"),
        "noisy256, no denoiser": ("noisy256", None, "input"),
        "noisy256, denoised at 224 px": ("noisy256", denoiser, "input"),
        "noisy768, no denoiser": ("noisy768", None, "input"),
        "noisy768, denoised at 224 px": ("noisy768", denoiser, "input"),
        "noisy768, denoised at full resolution": ("noisy768", denoiser, "full"),
    }
    out: dict[str, Any] = {}
    for label, (name, den, size) in runs.items():
        seconds, rows = timed_pipeline(
            (classifier, den, captioner),
            [sets[name]],
            work / "quality-runs" / label.replace(" ", "_").replace(",", ""),
            caption_all=True,
            denoise_size=size,
            thumbnails=False,
        )
        hyps = {f"{Path(p).stem}.jpg": r["caption"] for p, r in rows.items()}
        scores = compute_metrics({k: references[k] for k in hyps}, hyps).scores
        out[label] = {
            "BLEU-4": round(scores["BLEU-4"], 2),
            "CIDEr": round(scores["CIDEr"], 2),
            "images": len(hyps),
            "seconds": round(seconds, 1),
        }
        print(f"  {label}: BLEU-4 {scores['BLEU-4']:.1f}, CIDEr {scores['CIDEr']:.1f}, "
              f"{seconds:.0f} s", flush=True)  # fmt: skip
    return out


def catalogue_scale(manifest: Manifest, work: Path, count: int) -> dict[str, Any]:
    """``count`` synthetic rows: insert, size, search latency, review page."""
    folder = work / "catalogue-scale"
    if folder.exists():
        shutil.rmtree(folder)
    pool = [c for r in manifest.images for c in r.captions]
    rng = random.Random(0)
    classes = ["Painting", "Photo", "Schematics", "Sketch", "Text"]
    started = time.perf_counter()
    with Catalogue.open(folder, {"synthetic": True}) as catalogue:
        for start in range(0, count, 1000):
            rows = []
            for i in range(start, min(start + 1000, count)):
                kind = rng.choice(classes)
                p = rng.uniform(0.4, 1.0)
                caption = rng.choice(pool) if kind == "Photo" else None
                photo = caption is not None
                rows.append(
                    {
                        "path": f"/archive/box{i // 1000:03d}/scan-{i:06d}.jpg",
                        "sha256": f"{rng.getrandbits(256):064x}",
                        "size": rng.randint(50_000, 9_000_000),
                        "mtime_ns": 1_700_000_000_000_000_000 + i,
                        "width": 2480,
                        "height": 3508,
                        "kind": kind,
                        "probability": p,
                        "photo_probability": p if kind == "Photo" else 1 - p,
                        "probabilities": {c: (p if c == kind else (1 - p) / 4) for c in classes},
                        "captioned": photo,
                        "denoised": photo,
                        "caption": caption,
                        "caption_score": rng.uniform(0.3, 0.95) if photo else None,
                        "caption_log_prob": -rng.uniform(1, 8) if photo else None,
                        "thumbnail": f"thumbs/{i:016x}.jpg",
                        "classifier_id": "c" * 16,
                        "denoiser_id": "d" * 16 if photo else None,
                        "captioner_id": "m" * 16 if photo else None,
                        "decode_ms": 30.0,
                        "classify_ms": 20.0,
                    }
                )
            catalogue.write(rows)
        insert_s = time.perf_counter() - started
        queries = ["dog on a beach", "many buildings", "a green golf course", "river",
                   "parking lot with cars", "white clouds", "storage tanks", "airplane",
                   "dense residential area", "the sea and a beach", "baseball field",
                   "trees", "harbor boats", "two tennis courts", "freeway", "farmland",
                   "a bridge over the river", "sparse houses and green trees", "desert",
                   "chaparral"]  # fmt: skip
        latencies = []
        hits = []
        for _ in range(3):
            for q in queries:
                t0 = time.perf_counter()
                found = catalogue.search(q, limit=20)
                latencies.append(time.perf_counter() - t0)
                hits.append(len(found))
        latencies.sort()
        t0 = time.perf_counter()
        page = write_review_page(catalogue, folder)
        page_s = time.perf_counter() - t0
        captioned = catalogue.count("WHERE captioned = 1")
    return {
        "rows": count,
        "captioned": captioned,
        "insert_s": round(insert_s, 2),
        "database_mb": round((folder / "catalogue.sqlite").stat().st_size / 1e6, 1),
        "search_ms_median": round(1000 * statistics.median(latencies), 2),
        "search_ms_p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 2),
        "search_ms_max": round(1000 * latencies[-1], 2),
        "queries": len(latencies),
        "page_mb": round(page.stat().st_size / 1e6, 1),
        "page_s": round(page_s, 2),
    }


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its ended children)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return time.perf_counter(), me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(
    args: argparse.Namespace,
    models: tuple[Any, Any, Any],
    archive: Path,
    files: list[str],
    truth: dict[str, str],
    result: dict[str, Any],
    prefix: str = "",
) -> None:
    """Every way of running the chain, in ``--repeats`` interleaved rounds (a busy spell of a
    shared machine then hits each of them); the fastest run of each is kept, with all runs."""
    step = max(1, len(files) // args.loop_images)
    subset = [Path(p) for p in files[::step][: args.loop_images]]
    pipelines = {
        "pipeline": {},
        "pipeline_greedy": {"beam_size": 1},
        "pipeline_full_resolution_denoising": {"denoise_size": "full"},
        "pipeline_no_workers": {"num_workers": 0},  # decoding in the main process
    }
    # runs of earlier invocations (--only throughput again adds rounds to them)
    runs: dict[str, list[dict[str, Any]]] = result.get(f"{prefix}throughput_runs", {})
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, started: tuple[float, float], images: int, **extra: Any) -> None:
        wall, cpu = (a - b for a, b in zip(_clock(), started, strict=True))
        runs.setdefault(name, []).append(
            {"seconds": wall, "cpu_seconds": cpu, "images": images,
             "load_average": round(os.getloadavg()[0], 2), **extra}
        )  # fmt: skip
        print(f"  {name}: {wall:.1f} s ({cpu:.1f} CPU s), {images / wall:.2f} images/s",
              flush=True)  # fmt: skip

    for round_ in range(args.repeats):
        print(f"round {round_ + 1} (load average {os.getloadavg()[0]:.1f})", flush=True)
        for name, settings in pipelines.items():
            started = _clock()
            _, got = timed_pipeline(models, [archive], args.work / f"{prefix}{name}", **settings)
            record(name, started, len(files))
            if name == "pipeline":
                rows = rows or got
            if name == "pipeline" and round_ == 0:  # the bound right after, on the same load
                routed = {p for p, r in rows.items() if r["denoised"]}
                started = _clock()
                parts = bound(models, [Path(p) for p in files], routed)
                record("bound", started, len(files), **parts)
        if round_ > 0:
            started = _clock()
            parts = bound(models, [Path(p) for p in files], routed)
            record("bound", started, len(files), **parts)
        started = _clock()
        steps = three_commands(args, archive, args.work / f"{prefix}commands")
        record("three_commands", started, len(files), **steps)
        started = _clock()
        loop = seed_loop(models, subset)
        record("seed_loop", started, len(subset), captioned=loop["captioned"])
    result[f"{prefix}throughput_runs"] = runs
    best = {name: min(items, key=lambda r: r["seconds"]) for name, items in runs.items()}
    bound_rate = best["bound"]["images"] / min(r["forward_seconds"] for r in runs["bound"])
    out: dict[str, Any] = {}
    for name, run in best.items():
        out[name] = {
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()},
            "images_per_second": round(run["images"] / run["seconds"], 2),
            "all_runs_s": [round(r["seconds"], 1) for r in runs[name]],
        }
    out["bound"]["images_per_second"] = round(bound_rate, 2)
    for name in pipelines:
        out[name]["share_of_bound"] = round(out[name]["images_per_second"] / bound_rate, 3)
    rate = out["pipeline"]["images_per_second"]
    out["speedups"] = {
        name: round(rate / out[name]["images_per_second"], 2)
        for name in ("three_commands", "seed_loop")
    }
    out["pipeline"]["captioned"] = sum(r["captioned"] for r in rows.values())
    out["pipeline"]["stage_seconds"] = {
        stage: round(sum((r[f"{stage}_ms"] or 0.0) for r in rows.values()) / 1000, 1)
        for stage in ("decode", "classify", "denoise", "caption")
    }  # of the first run; decode: summed over the worker processes, beside the models
    keep = held_out(args.classifier_data, archive, truth)
    out["routing"] = {"all": routing(rows, truth, None)}
    if keep:
        out["routing"]["held_out_sources"] = routing(rows, truth, keep)
    for name, value in out.items():
        result[f"{prefix}{name}"] = value
        print(f"{prefix}{name}: {value}", flush=True)


def build_scans(archive: Path, truth: dict[str, str], folder: Path, count: int) -> dict[str, str]:
    """Scan-sized copies (A4 at 300 dpi, 2480 x 3508, JPEG q90) of ``count`` files of the
    mixed folder, half photos (the noisy ones among them stay noisy), half other kinds."""
    photos = [p for p, t in sorted(truth.items()) if t == "Photo"][::7][: count // 2]
    others = [p for p, t in sorted(truth.items()) if t != "Photo"][::23][: count - len(photos)]
    out: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for path in photos + others:
        target = folder / f"{Path(path).parent.name}-{Path(path).stem}.jpg"
        if not target.is_file():
            image = load_image(path)
            size = (3508, 2480) if image.width >= image.height else (2480, 3508)
            image.resize(size, Image.BICUBIC).save(target, quality=90)
        out[str(target.absolute())] = truth[path]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--classifier-data", type=Path, help="the classifier run's data.json")
    parser.add_argument("--denoiser", type=Path, required=True)
    parser.add_argument("--captioner", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="UCM manifest (prepare)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/pipeline-bench"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--loop-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the throughput runs")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=1, help="a smaller folder, for a try run")
    parser.add_argument("--scans", type=int, default=40, help="files of the scan-sized folder")
    parser.add_argument(
        "--only", nargs="*", default=[], help="sections: throughput scans quality catalogue "
        "(default: all)"
    )  # fmt: skip
    args = parser.parse_args()
    sections = set(args.only or ["throughput", "scans", "quality", "catalogue"])
    manifest = Manifest.load(args.manifest)
    result: dict[str, Any] = (
        json.loads(args.output.read_text()) if args.output.is_file() and args.only else {}
    )
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }

    def save() -> None:
        atomic_write_json(args.output, result)

    archive = args.work / "archive"
    truth = build_archive(args.data, manifest, archive, args.every)
    files = sorted(truth)
    print(f"mixed folder: {len(files)} files, {sum(t == 'Photo' for t in truth.values())} photos",
          flush=True)  # fmt: skip
    models = load_models(args)
    if "throughput" in sections:
        throughput(args, models, archive, files, truth, result)
        save()
    if "scans" in sections:
        scans = build_scans(archive, truth, args.work / "scans", args.scans)
        print(f"scans: {len(scans)} files of 2480 x 3508 px", flush=True)
        throughput(args, models, args.work / "scans", sorted(scans), scans, result, "scans_")
        save()
    if "quality" in sections:
        print("caption quality through the chain:", flush=True)
        result["quality"] = quality(models, manifest, args.work)
        save()
    if "catalogue" in sections:
        result["catalogue_scale"] = catalogue_scale(manifest, args.work, args.rows)
        print("catalogue:", result["catalogue_scale"], flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    save()
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
