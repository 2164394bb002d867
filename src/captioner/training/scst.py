"""Self-critical sequence training (Rennie et al. 2017): fine-tune a trained captioner on CIDEr-D.

For each training image the model samples ``samples`` captions; each caption's reward is its
CIDEr-D against the image's references (idf from the whole training split) and its baseline is
the mean reward of the other samples of the same image (the leave-one-out baseline of later
SCST implementations, which needs no extra greedy decode). The loss is
``-(reward - baseline) * log p(caption)`` averaged over the sampled words.

A run folder holds ``scst_config.json``, ``model/`` (best on the validation metric, selected on
val only), ``checkpoint/`` (last epoch, for ``--resume``), ``history.json`` and ``tensorboard/``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from captioner.data.manifest import Manifest
from captioner.data.text import tokenize
from captioner.data.vocabulary import END_ID, PAD_ID, START_ID, Vocabulary
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache
from captioner.fileio import atomic_write_json
from captioner.model.captioner import Captioner, DecodeSettings, check_backbone_matches
from captioner.model.decoder import ShowAttendTell
from captioner.runlog import say, tensorboard_writer
from captioner.runtime import resolve_device, seed_everything
from captioner.training.checkpoint import (
    check_resume,
    check_resumed_settings,
    load_training_state,
    save_training_state,
)
from captioner.training.cider_reward import CiderD
from captioner.training.early_stopping import EarlyStopping


@dataclass
class ScstConfig:
    model: str  # folder of the cross-entropy model to start from
    manifest: str
    features: str
    out: str
    epochs: int = 20
    learning_rate: float = 2e-5
    samples: int = 5  # captions sampled per image
    batch_images: int = 32
    max_length: int = 30
    grad_clip: float = 5.0
    select_on: str = "CIDEr"  # "CIDEr" | "BLEU-4", on the validation split
    eval_beam_size: int = 3
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise CaptionerError("scst needs at least 2 samples per image (leave-one-out baseline)")
        if self.epochs < 1 or self.batch_images < 1 or self.patience < 1:
            raise CaptionerError("epochs, batch_images and patience must be >= 1")
        if self.learning_rate <= 0:
            raise CaptionerError("learning_rate must be > 0")
        if self.select_on not in ("CIDEr", "BLEU-4"):
            raise CaptionerError("select_on must be CIDEr or BLEU-4")


@dataclass
class ScstResult:
    model_dir: Path
    best_epoch: int  # 0: no epoch beat the starting model, which was kept
    best_score: float
    history: list[dict[str, Any]]


def sample_with_log_probs(
    model: ShowAttendTell, features: torch.Tensor, samples: int, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``samples`` captions per image, keeping the graph of their log-probabilities.

    Returns token ids [B*samples, T] (<pad> after <end>), per-token log-probabilities and a
    mask of the tokens that count (words and the <end> that closes them).
    """
    encoded = model.encode(features).repeat_interleave(samples)
    hidden = model.initial_hidden(encoded)
    n = hidden.shape[0]
    tokens = torch.full((n,), START_ID, dtype=torch.long, device=features.device)
    alive = torch.ones(n, dtype=torch.bool, device=features.device)
    never_next = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=features.device)
    never_next[[PAD_ID, START_ID]] = True
    ids, log_probs, masks = [], [], []
    for _ in range(max_length):
        logits, hidden, _ = model.step(tokens, hidden, encoded)
        step_log_probs = torch.log_softmax(logits.float().masked_fill(never_next, -1e9), dim=-1)
        tokens = torch.multinomial(step_log_probs.detach().exp(), 1).squeeze(1)
        ids.append(torch.where(alive, tokens, torch.full_like(tokens, PAD_ID)))
        log_probs.append(step_log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1))
        masks.append(alive.float())
        alive = alive & (tokens != END_ID)
        if not bool(alive.any()):
            break
    return torch.stack(ids, 1), torch.stack(log_probs, 1), torch.stack(masks, 1)


def caption_words(ids: list[int], vocab: Vocabulary) -> list[str]:
    words = []
    for token in ids:
        if token in (END_ID, PAD_ID):
            break
        words.append(vocab.id_to_token(token))
    return words


def leave_one_out_advantage(rewards: torch.Tensor, samples: int) -> torch.Tensor:
    """rewards [B*samples] -> reward minus the mean of the image's other samples."""
    grouped = rewards.view(-1, samples)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (samples - 1)
    return (grouped - baseline).view(-1)


# Settings a resumed SCST run may change (paths, device, display, how long it goes on).
RESUME_MAY_CHANGE = {"manifest", "features", "out", "epochs", "patience", "device", "progress"}


def finetune(config: ScstConfig, resume: bool = False) -> ScstResult:
    run_dir = Path(config.out)
    state_dir = check_resume(run_dir, resume, "an SCST run")
    if resume:
        check_resumed_settings(
            run_dir / "scst_config.json", asdict(config), RESUME_MAY_CHANGE, "an SCST run"
        )
    seed_everything(config.seed)
    device = resolve_device(config.device)
    start = Captioner.from_pretrained(config.model, device=device, backbone_weights=None)
    model, vocab = start.model, start.vocab
    manifest = Manifest.load(Path(config.manifest))
    cache = FeatureCache.open(Path(config.features) / "train")
    check_backbone_matches(cache.header, start.backbone_header)
    images, rows = _training_images(manifest, cache)
    reward = CiderD({key: [tokenize(c) for c in manifest_caps] for key, manifest_caps in images})
    keys = [key for key, _ in images]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "scst_config.json", asdict(config))

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    stopper = EarlyStopping(config.patience, 0.0, mode="max")
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume:
        progress = load_training_state(state_dir, model, optimizer, None)
        stopper.load_state_dict(progress["early_stopping"])
        history, start_epoch = progress["history"], progress["epoch"] + 1
    else:
        initial = _validation_scores(
            Captioner(model, vocab, start.backbone_header), manifest, config
        )
        stopper.update(initial[config.select_on], 0)
        history.append({"epoch": 0, **{f"val_{k}": v for k, v in initial.items()}})
        _save_model(model, vocab, start, initial, 0, run_dir, config)
        say(config.progress, f"start: val {_describe(initial)}")
    writer = tensorboard_writer(run_dir / "tensorboard")

    for epoch in range(start_epoch, config.epochs + 1):
        if stopper.should_stop:
            break
        started = time.perf_counter()
        order = torch.randperm(
            len(keys), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        ).tolist()
        mean_reward = _train_epoch(
            model, vocab, cache, keys, rows, order, reward, optimizer, config, device, epoch
        )
        scores = _validation_scores(
            Captioner(model, vocab, start.backbone_header), manifest, config
        )
        seconds = time.perf_counter() - started
        improved = stopper.update(scores[config.select_on], epoch)
        if improved:
            _save_model(model, vocab, start, scores, epoch, run_dir, config)
        record = {
            "epoch": epoch,
            "train_reward": mean_reward,
            **{f"val_{k}": v for k, v in scores.items()},
            "seconds": round(seconds, 2),
        }
        history.append(record)
        if writer is not None:
            writer.add_scalar("scst/train_reward", mean_reward, epoch)
            for name, value in scores.items():
                writer.add_scalar(f"metric/val_{name}", value, epoch)
            writer.flush()
        progress = {"epoch": epoch, "history": history, "early_stopping": stopper.state_dict()}
        save_training_state(state_dir, model, optimizer, None, progress)
        atomic_write_json(run_dir / "history.json", history)
        say(
            config.progress,
            f"epoch {epoch}: reward {mean_reward:.3f}, val {_describe(scores)}"
            f"{' (best)' if improved else ''}, {seconds:.1f}s",
        )
    if writer is not None:
        writer.close()
    return ScstResult(run_dir / "model", stopper.best_epoch, float(stopper.best or 0.0), history)


def _training_images(
    manifest: Manifest, cache: FeatureCache
) -> tuple[list[tuple[str, list[str]]], dict[str, int]]:
    valid = set(int(i) for i in cache.valid_indices())
    images, rows = [], {}
    for record in manifest.split("train"):
        try:
            row = cache.index_of(record.file)
        except CaptionerError:  # not in this cache
            continue
        captions = [c for c in record.captions if tokenize(c)]
        if row in valid and captions:
            images.append((record.file, captions))
            rows[record.file] = row
    if not images:
        raise CaptionerError("no training image has both features and captions")
    return images, rows


def _train_epoch(
    model: ShowAttendTell,
    vocab: Vocabulary,
    cache: FeatureCache,
    keys: list[str],
    rows: dict[str, int],
    order: list[int],
    reward: CiderD,
    optimizer: torch.optim.Optimizer,
    config: ScstConfig,
    device: torch.device,
    epoch: int,
) -> float:
    model.train()
    total, count = 0.0, 0
    batches = range(0, len(order), config.batch_images)
    bar = tqdm(
        batches, desc=f"scst {epoch}", unit="batch", disable=not config.progress, leave=False
    )
    for begin in bar:
        batch_keys = [keys[i] for i in order[begin : begin + config.batch_images]]
        feats = np.stack(
            [np.asarray(cache.features(rows[k]), dtype=np.float32) for k in batch_keys]
        )
        ids, log_probs, mask = sample_with_log_probs(
            model, torch.from_numpy(feats).to(device), config.samples, config.max_length
        )
        sampled = ids.cpu().tolist()
        rewards = torch.tensor(
            [
                reward.score(batch_keys[i // config.samples], caption_words(seq, vocab))
                for i, seq in enumerate(sampled)
            ],
            device=device,
        )
        advantage = leave_one_out_advantage(rewards, config.samples)
        loss = -(advantage.unsqueeze(1) * log_probs * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += float(rewards.sum())
        count += rewards.numel()
        bar.set_postfix(reward=f"{total / count:.3f}")
    return total / max(count, 1)


def _validation_scores(
    captioner: Captioner, manifest: Manifest, config: ScstConfig
) -> dict[str, float]:
    from captioner.evaluation import selection_scores

    decode = DecodeSettings(beam_size=config.eval_beam_size, max_length=config.max_length)
    return selection_scores(captioner, manifest, Path(config.features), "val", decode)


def _save_model(
    model: ShowAttendTell,
    vocab: Vocabulary,
    start: Captioner,
    scores: dict[str, float],
    epoch: int,
    run_dir: Path,
    config: ScstConfig,
) -> None:
    info = dict(start.info)
    info.update(
        {
            "scst": {"epoch": epoch, "from": str(config.model), "val_scores": scores},
            "select_on": config.select_on,
        }
    )
    Captioner(model, vocab, start.backbone_header, info).save_pretrained(run_dir / "model")


def _describe(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f}" for name, value in scores.items())
