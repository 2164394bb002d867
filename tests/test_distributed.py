"""DDP for real: 2 gloo CPU processes under torchrun give the single-process step, run and cache.

Also mixed precision on CPU (bf16 trains, fp16 is refused) and the torch.compile fallback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_worker import CPU, shard, step_fixture
from safetensors.torch import load_file
from test_features_extract import make_images, tiny_backbone
from test_training import tiny_config

from captioner.caption.captioner import Captioner
from captioner.cli import main as cli_main
from captioner.data.manifest import Manifest
from captioner.data.vocabulary import Vocabulary
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache
from captioner.features.extract import extract_split
from captioner.features.sharded import RankCache
from captioner.runtime import distributed
from captioner.runtime.distributed import DistContext
from captioner.training.config import TrainConfig
from captioner.training.data import pair_captions
from captioner.training.precision import Precision
from captioner.training.steps import evaluate_loss, train_step
from captioner.training.trainer import _loader, train

TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
if not distributed.dist.is_available() or not distributed.dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        TORCHRUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ddp_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch of tests/ddp_worker.py: a DDP step, then a sharded extraction."""
    root = tmp_path_factory.mktemp("ddp")
    make_images(root / "images", n=9, bad=(3,))
    torchrun([str(TESTS / "ddp_worker.py"), str(root / "images"), str(root / "out")], cwd=root)
    return root


def test_one_ddp_step_over_two_ranks_equals_the_single_process_step(ddp_outputs: Path) -> None:
    step_dir = ddp_outputs / "out" / "step"
    model, features, captions, config = step_fixture()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ce, tokens = train_step(
        model, model, [features], captions, optimizer, config, Precision("fp32", CPU), DistContext()
    )
    ddp = json.loads((step_dir / "loss.json").read_text())
    assert ddp["tokens"] == tokens == 37 + 7  # words + <end> of the 7 captions
    assert ddp["loss"] == pytest.approx(ce, abs=1e-5)
    ddp_weights = load_file(str(step_dir / "ddp.st"))
    moved = 0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, atol=1e-6, rtol=1e-5)
        moved += int(not torch.equal(value, step_fixture()[0].state_dict()[name]))
    assert moved == len(ddp_weights)  # the step changed every tensor, identically


def test_rank_shards_cover_the_batch_with_uneven_token_counts() -> None:
    _, features, captions, _ = step_fixture()
    (f0, c0), (f1, c1) = (shard(features, captions, r, 2) for r in (0, 1))
    assert len(f0) + len(f1) == 7 and c0.shape[1] != c1.shape[1]
    assert int((c0[:, 1:] != 0).sum()) != int((c1[:, 1:] != 0).sum())


def test_torchrun_train_writes_one_run_and_matches_the_single_process_run(
    tmp_path: Path,
) -> None:
    # The whole training split (6 captions) is one global batch: 6 on one process, 3 + 3 on two.
    single = train(tiny_config(tmp_path / "single", epochs=3, attention_lambda=0.5))
    reference = tiny_config(tmp_path / "ddp")
    args = [
        "-m",
        "captioner.cli",
        "train",
        "--manifest",
        reference.manifest,
        "--features",
        reference.features,
        "--out",
        reference.out,
        "--epochs",
        "3",
        "--batch-size",
        "3",
        "--lr",
        "0.01",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "model.encoder_dim=32",
        "model.embed_dim=16",
        "model.attention_dim=32",
        "model.hidden_dim=64",
        "patience=100",
        "attention_lambda=0.5",
    ]
    done = torchrun(args, cwd=tmp_path)
    assert done.stdout.count("model saved to") == 1  # rank 0 alone reports
    assert done.stdout.count("training epoch 3: train_loss") == 1
    run = Path(reference.out)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(single.history, history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    # The all-reduced validation loss is exactly the single-process loss of the saved model.
    model = Captioner.from_pretrained(run / "model", backbone_weights=None).model
    config = TrainConfig(**{**reference.to_dict(), "batch_size": 4})
    val_cache = FeatureCache.open(Path(reference.features) / "val")
    vocab = Vocabulary.load(run / "vocab.json")
    manifest = Manifest.load(Path(reference.manifest))
    val = pair_captions(val_cache, manifest.split("val"), vocab, config.max_caption_length)
    loader = _loader(val_cache, val, config, False, DistContext())
    assert history[-1]["val_loss"] == pytest.approx(evaluate_loss(model, loader, CPU), abs=1e-6)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single.run_dir.iterdir())


def test_torchrun_sharded_extraction_equals_a_single_process_extraction(
    ddp_outputs: Path, tmp_path: Path
) -> None:
    records = [(p.name, p) for p in sorted((ddp_outputs / "images").iterdir())]
    single = extract_split(
        records, tmp_path / "single", tiny_backbone(), batch_size=1, num_workers=0, progress=False
    )
    (tmp_path / "ddp").symlink_to(ddp_outputs / "out" / "cache")
    (tmp_path / "ddp.report.json").symlink_to(ddp_outputs / "out" / "cache.report.json")
    report = json.loads((tmp_path / "ddp.report.json").read_text())
    assert report == {"extracted_now": single.extracted_now, "failed": sorted(single.failed)}
    assert report["extracted_now"] == 8 and report["failed"] == ["img03.png"]
    a, b = FeatureCache.open(tmp_path / "single"), FeatureCache.open(tmp_path / "ddp")
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(np.asarray(a.array), np.asarray(b.array))
    assert a.failures() == b.failures() and a.header == b.header
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )  # the per-rank status files were merged and removed


def test_progress_left_by_a_killed_sharded_run_is_merged_not_redone(tmp_path: Path) -> None:
    records = make_images(tmp_path / "images", n=6, bad=())
    backbone = tiny_backbone()
    extract_split(records, tmp_path / "full", backbone, progress=False, num_workers=0)
    full = FeatureCache.open(tmp_path / "full")
    reference = np.asarray(full.array).copy()
    # "rank 1 of 2" finished its rows 1, 3, 5 and the run was killed before the merge
    out = tmp_path / "killed"
    FeatureCache.create(out, full.header, full.keys)
    rank1 = RankCache.open_rank(out, full.header, rank=1, world_size=2)
    rank1.write([1, 3, 5], reference[[1, 3, 5]])
    rank1.flush()
    assert (out / "status.rank1of2.npy").is_file()
    assert FeatureCache.open(out).valid_indices().tolist() == []  # not merged yet
    report = extract_split(records, out, backbone, progress=False, num_workers=0)
    assert (report.already_done, report.extracted_now) == (3, 3)
    assert not list(out.glob("*.rank*"))
    merged = FeatureCache.open(out)
    assert merged.is_complete()
    np.testing.assert_array_equal(np.asarray(merged.array), reference)


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, epochs=25, precision="bf16"))
    losses = [h["train_loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["precision"] == "bf16"
    weights = load_file(str(result.model_dir / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast, fp32 master


def test_fp16_on_cpu_and_unknown_precisions_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tmp_path, precision="fp16")
    with pytest.raises(CaptionerError, match="fp16 needs a CUDA device"):
        train(config)
    assert not Path(config.out).exists()
    with pytest.raises(CaptionerError, match="precision must be"):
        TrainConfig(precision="fp8")
    code = cli_main(
        ["train", "--manifest", config.manifest, "--features", config.features, "--out",
         str(tmp_path / "cli"), "--device", "cpu", "--precision", "fp16", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fp16 needs a CUDA device" in err


def test_compile_failure_falls_back_to_eager_with_a_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def broken_compile(module: torch.nn.Module) -> object:
        def run(*args: object) -> object:
            calls.append(len(args))
            raise RuntimeError("no C++ compiler\ndetails")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager = train(tiny_config(tmp_path / "eager", epochs=2))
    compiled = train(tiny_config(tmp_path / "compiled", epochs=2, compile=True))
    out = capsys.readouterr().out
    assert calls == [2] and out.count("torch.compile failed (RuntimeError: no C++ compiler)") == 1
    for a, b in zip(eager.history, compiled.history, strict=True):
        # compile pads captions to a multiple of 8 steps; pads do not change the loss
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


def test_auto_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from captioner.training import precision as module

    monkeypatch.setattr(module, "native_cpu_bf16", lambda: False)
    assert Precision("auto", CPU).name == "fp32"  # emulated bf16 would be slower, not faster
    monkeypatch.setattr(module, "native_cpu_bf16", lambda: True)
    assert Precision("auto", CPU).name == "bf16"
    assert Precision("fp32", CPU).name == "fp32"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert module.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert TrainConfig(precision="auto").precision == "auto"  # resolved per run, not saved
