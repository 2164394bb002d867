"""Caption metrics on the papers' scale (x100): BLEU-1..4, METEOR, ROUGE-L and CIDEr.

With Java: the COCO pipeline (pycocoevalcap's Stanford PTB tokenizer, then its scorers,
METEOR included). Without Java: a pure-Python PTB-like tokenizer and the pure-Python BLEU,
ROUGE-L and CIDEr scorers; METEOR is then listed in ``MetricReport.skipped``.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from captioner.errors import CaptionerError

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@dataclass
class MetricReport:
    """Corpus-level scores (x100), how captions were tokenised and what could not be run."""

    scores: dict[str, float]
    tokenizer: str
    skipped: list[str] = field(default_factory=list)
    num_images: int = 0
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # BLEU-4, CIDEr (x100)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_metrics(
    references: dict[str, list[str]],
    hypotheses: dict[str, str],
    use_java: bool | None = None,
) -> MetricReport:
    """Score one hypothesis per image against its references; ``use_java=None`` auto-detects."""
    keys = _validate(references, hypotheses)
    java = java_available() if use_java is None else use_java
    if java and not java_available():
        raise CaptionerError("use_java=True but no working `java` was found on PATH")
    skipped: list[str] = []
    refs = hyps = None
    if java:
        try:
            refs, hyps = _java_tokenize(references, hypotheses, keys)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            if use_java:
                raise CaptionerError(f"the Java PTB tokenizer failed: {exc}") from exc
            java = False
            skipped.append(f"METEOR: Java PTB tokenizer failed ({exc}); used the Python one")
    if refs is None or hyps is None:
        refs = {k: [simple_tokenize(r) for r in references[k]] for k in keys}
        hyps = {k: [simple_tokenize(hypotheses[k])] for k in keys}
    scores, per_image = _pure_python_scores(refs, hyps)
    if java:
        try:
            scores["METEOR"] = 100.0 * _meteor(refs, hyps)
        except ValueError:
            skipped.append("METEOR: failed (the Java scorer returned no score)")
        except (OSError, subprocess.SubprocessError) as exc:
            skipped.append(f"METEOR: failed ({exc})")
    elif not skipped:
        skipped.append("METEOR: Java not found" if use_java is None else "METEOR: Java disabled")
    ordered = {name: float(scores[name]) for name in METRIC_NAMES if name in scores}
    return MetricReport(ordered, "ptb-java" if java else "simple", skipped, len(keys), per_image)


def exact_match_rate(references: dict[str, list[str]], hypotheses: dict[str, str]) -> float:
    """Fraction of images whose normalised hypothesis equals one of its normalised references."""
    keys = _validate(references, hypotheses)
    hits = sum(
        normalize_caption(hypotheses[k]) in {normalize_caption(r) for r in references[k]}
        for k in keys
    )
    return hits / len(keys)


def format_table(report: MetricReport) -> str:
    """An aligned two-column text table of a report, skipped metrics marked as such."""
    skipped = {item.split(":", 1)[0] for item in report.skipped}
    rows = [
        (name, f"{report.scores[name]:7.2f}" if name in report.scores else "skipped")
        for name in METRIC_NAMES
        if name in report.scores or name in skipped
    ]
    head = f"{report.num_images} images, tokenizer {report.tokenizer}"
    lines = [head, "-" * len(head)]
    lines += [f"{name:<8}  {value:>7}" for name, value in rows]
    lines += [f"note: {item}" for item in report.skipped]
    return "\n".join(lines)


def normalize_caption(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace (for exact-match comparisons)."""
    text = unicodedata.normalize("NFC", text).lower()
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(kept.split())


@functools.cache
def java_available() -> bool:
    """Whether `java` is on PATH and actually starts."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        done = subprocess.run([java, "-version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


# --- pure-Python tokenizer, close to the Stanford PTB tokenizer + pycocoevalcap ---------------

_REPLACE = {"’": "'", "‘": "'", "“": '"', "”": '"', "—": " -- ", "–": " -- ", "…": " ... "}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
_TOKEN = re.compile(
    r"<\w+>"  # special tokens such as <unk>
    r"|(?:[^\W\d_]\.){2,}"  # dotted abbreviations: u.s. p.m.
    r"|\w+(?:[-'.,:/]\w+)*'?"  # words, numbers, hyphenated words, clitics
    r"|\.{3,}|-{2,}"  # ellipsis, dashes
    r"|([^\w\s])\1*"  # runs of one punctuation mark or symbol
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'re|'ve|'ll|'d)$")


def simple_tokenize(text: str) -> str:
    """Lower-case and tokenise like pycocoevalcap's PTB step, dropping its punctuation tokens."""
    text = _clean(text).lower()
    for old, new in _REPLACE.items():
        text = text.replace(old, new)
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        tokens.extend(_split_token(match.group(0)))
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def _split_token(token: str) -> list[str]:
    if token in _BRACKETS:
        return [_BRACKETS[token]]
    if token.startswith("--"):
        return ["--"]
    if token.startswith('"'):
        return ["''"]
    if token in _SPLIT_WORDS:
        return _SPLIT_WORDS[token].split()
    if token.endswith("'") and len(token) > 1:
        return [*_split_token(token[:-1]), "'"]
    clitic = _CLITIC.match(token)
    if clitic and clitic.group(1)[-1].isalpha():
        return [clitic.group(1), clitic.group(2)]
    return [token]


def _clean(text: str) -> str:
    """NFC-normalise and put every caption on one line (the Java tokenizer is line based)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


# --- scoring ----------------------------------------------------------------------------------


def _validate(references: dict[str, list[str]], hypotheses: dict[str, str]) -> list[str]:
    if not isinstance(references, dict) or not isinstance(hypotheses, dict):
        raise CaptionerError("references and hypotheses must both be dicts keyed by image")
    missing = [k for k in references if k not in hypotheses]
    extra = [k for k in hypotheses if k not in references]
    if missing or extra:
        raise CaptionerError(
            f"references and hypotheses cover different images: {len(missing)} without a "
            f"hypothesis (e.g. {missing[:3]}), {len(extra)} without references (e.g. {extra[:3]})"
        )
    if not references:
        raise CaptionerError("no images to score")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise CaptionerError(f"image {key!r}: references must be a non-empty list of strings")
        if not isinstance(hypotheses[key], str):
            raise CaptionerError(f"image {key!r}: the hypothesis must be a string")
    return list(references)


def _java_tokenize(
    references: dict[str, list[str]], hypotheses: dict[str, str], keys: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """One Stanford PTB tokenizer run over references and hypotheses together."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    batch: dict[tuple[str, Any], list[dict[str, str]]] = {}
    for k in keys:
        batch[("ref", k)] = [{"caption": _clean(r)} for r in references[k]]
        batch[("hyp", k)] = [{"caption": _clean(hypotheses[k])}]
    out = PTBTokenizer().tokenize(batch)
    if any(len(out.get(key, [])) != len(caps) for key, caps in batch.items()):
        raise ValueError("its output does not line up with the captions given")
    refs = {k: out[("ref", k)] for k in keys}
    hyps = {k: out[("hyp", k)] for k in keys}
    return refs, hyps


def _pure_python_scores(
    refs: dict[str, list[str]], hyps: dict[str, list[str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """BLEU-1..4, ROUGE-L and CIDEr (x100) on tokenised, space-separated captions, and the
    per-image BLEU-4 and CIDEr (the scorers iterate over the keys in the same order)."""
    bleu, bleu_each = Bleu(4).compute_score(refs, hyps, verbose=0)
    rouge, _ = Rouge().compute_score(refs, hyps)
    cider, cider_each = Cider().compute_score(refs, hyps)
    scores = {f"BLEU-{n + 1}": 100.0 * float(value) for n, value in enumerate(bleu)}
    scores["ROUGE-L"] = 100.0 * float(rouge)
    scores["CIDEr"] = 100.0 * float(cider)
    per_image = {
        key: {"BLEU-4": 100.0 * float(b4), "CIDEr": 100.0 * float(c)}
        for key, b4, c in zip(hyps, bleu_each[3], cider_each, strict=True)
    }
    return scores, per_image


def _meteor(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> float:
    """Corpus METEOR from pycocoevalcap's Java scorer; the Java process is always ended."""
    from pycocoevalcap.meteor.meteor import Meteor

    safe_refs = {k: [_meteor_safe(r) for r in v] for k, v in refs.items()}
    safe_hyps = {k: [_meteor_safe(h) for h in v] for k, v in hyps.items()}
    meteor = Meteor()
    # A hung scorer is killed, which turns its pending read into an error instead of a hang.
    watchdog = threading.Timer(120 + 0.05 * len(refs), meteor.meteor_p.kill)
    watchdog.start()
    try:
        score, _ = meteor.compute_score(safe_refs, safe_hyps)
    finally:
        watchdog.cancel()
        _close_meteor(meteor)
    return float(score)


def _meteor_safe(text: str) -> str:
    return " ".join(text.replace("|||", " ").split())


def _close_meteor(meteor: Any) -> None:
    process: subprocess.Popen = meteor.meteor_p
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    process.kill()
    process.wait()
    if meteor.lock.locked():  # compute_score leaves it held when it raises; __del__ would hang
        meteor.lock.release()
