"""The embedded default: a procedural shapes dataset run through the whole pipeline.

generate scenes -> prepare (JSONL) -> extract (MobileNetV2, offline ImageNet weights)
-> train -> caption the test split -> report (captions vs references, attention PNGs,
loss curve, exact-match rate and BLEU-4).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from captioner.caption.captioner import Captioner
from captioner.caption.config import DecoderShape
from captioner.caption.decode_settings import DecodeSettings
from captioner.data.prepare import format_summary, prepare_dataset
from captioner.demo.shapes import generate_shapes_dataset
from captioner.evaluation.metrics import compute_metrics, exact_match_rate
from captioner.evaluation.split import caption_split
from captioner.features.extract import extract_manifest
from captioner.fileio import atomic_write_json
from captioner.training.config import TrainConfig
from captioner.training.trainer import train
from captioner.viz import write_attention_maps


def run_demo(
    out: Path = Path("runs/demo"),
    num_images: int = 1200,
    epochs: int = 20,
    weights: str = "DEFAULT",
    seed: int = 0,
    progress: bool = True,
    chain: bool = True,
) -> dict:
    """Run the demo end to end in ``out``; return the report dict (also in report/).

    ``chain``: then run the whole chain (classifier, denoiser, captioner) over an embedded
    archive of stand-ins into ``out/chain/catalogue`` (``demo/chain.py``)."""
    out = Path(out)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[demo] {name} done in {timings[name]:.1f}s", flush=True)

    t0 = time.perf_counter()
    captions_file = generate_shapes_dataset(out / "data", num_images=num_images, seed=seed)
    lap("generate", t0)

    t0 = time.perf_counter()
    manifest = prepare_dataset(captions_file, out / "data" / "images", seed=seed)
    manifest_path = out / "manifest.json"
    manifest.save(manifest_path)
    print(format_summary(manifest))
    lap("prepare", t0)

    t0 = time.perf_counter()
    extract_manifest(
        manifest,
        out / "features",
        backbone_name="mobilenet_v2",
        weights=weights,
        batch_size=32,
        num_workers=2,
        progress=progress,
    )
    lap("extract", t0)

    t0 = time.perf_counter()
    run_dir = out / "run"
    config = TrainConfig(
        manifest=str(manifest_path),
        features=str(out / "features"),
        out=str(run_dir),
        epochs=epochs,
        batch_size=32,
        learning_rate=2e-3,
        patience=3,
        seed=seed,
        model=DecoderShape(init_hidden="mean", position_embedding=True),
        lr_schedule="plateau",
        progress=progress,
        log_every=20,
    )
    result = train(config, resume=_resumable(run_dir, config))
    lap("train", t0)

    t0 = time.perf_counter()
    captioner = Captioner.from_pretrained(result.model_dir, backbone_weights=None)
    report_dir = out / "report"
    report: dict = {
        "timings_s": timings,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "decoding": {},
    }
    for name, decode in (
        ("greedy", DecodeSettings(beam_size=1)),
        ("beam3", DecodeSettings(beam_size=3)),
    ):
        split = caption_split(
            captioner, manifest, out / "features", "test", decode, progress=progress
        )
        hyps = {k: r.caption for k, r in split.results.items()}
        metrics = compute_metrics(split.references, hyps, use_java=False)
        report["decoding"][name] = {
            "exact_match": exact_match_rate(split.references, hyps),
            "BLEU-4": metrics.scores["BLEU-4"],
            "CIDEr": metrics.scores["CIDEr"],
            "images": len(hyps),
        }
        if name == "beam3":
            _write_captions(report_dir / "captions.tsv", split.references, hyps)
            examples = [split.results[k] for k in list(split.results)[:6]]
            for r in examples:
                r.source = str(manifest.image_root / r.source)
            write_attention_maps(examples, report_dir / "attention")
    lap("evaluate", t0)
    if chain:
        from captioner.demo.chain import run_chain_demo

        t0 = time.perf_counter()
        report["chain"] = run_chain_demo(
            out / "chain", result.model_dir, manifest, weights, seed, progress
        )
        lap("chain", t0)
    (report_dir).mkdir(parents=True, exist_ok=True)
    (report_dir / "loss_curve.png").write_bytes((run_dir / "loss_curve.png").read_bytes())
    report["total_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(report_dir / "report.json", report)
    for name, scores in report["decoding"].items():
        print(
            f"[demo] test split, {name}: exact match {100 * scores['exact_match']:.1f}% "
            f"of {scores['images']} images, BLEU-4 {scores['BLEU-4']:.1f}, "
            f"CIDEr {scores['CIDEr']:.1f}"
        )
    print(
        f"[demo] report in {report_dir} (captions.tsv, attention/, loss_curve.png, "
        f"report.json); total {report['total_s']:.0f}s"
    )
    print(
        f"[demo] try: captioner caption {manifest.image_root}/shape_00000.png "
        f"--model {result.model_dir}"
    )
    return report


def _resumable(run_dir: Path, config: TrainConfig) -> bool:
    """Resume a killed demo run with the same settings; start afresh after a change."""
    from captioner.training.checkpoint import has_training_state

    saved = run_dir / "train_config.json"
    if (
        has_training_state(run_dir / "checkpoint")
        and saved.is_file()
        and json.loads(saved.read_text(encoding="utf-8")) == config.to_dict()
    ):
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def _write_captions(path: Path, references: dict[str, list[str]], hyps: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["image\tgenerated\treferences"]
    for key, hyp in hyps.items():
        lines.append(f"{key}\t{hyp}\t{json.dumps(references[key], ensure_ascii=False)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
