"""CIDEr-D as a per-caption reward, with document frequencies from the training corpus.

The formula is pycocoevalcap's ``CiderScorer`` (n = 1..4, tf-idf vectors, clipped overlap,
Gaussian length penalty with sigma 6, x10), but the idf comes from all training images instead
of the handful of images in the batch being scored, as in self-critical training
(Rennie et al. 2017) and its reference code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Ngrams = Counter[tuple[str, ...]]
_SIGMA = 6.0


def ngram_counts(words: Sequence[str], n_max: int = 4) -> Ngrams:
    counts: Ngrams = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts


class _Vector:
    """tf-idf weights of one caption per n-gram order, their norms and the caption length."""

    __slots__ = ("weights", "norms", "length")

    def __init__(
        self, counts: Ngrams, length: int, idf: dict[tuple[str, ...], float], default: float
    ):
        self.weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(4)]
        for gram, tf in counts.items():
            self.weights[len(gram) - 1][gram] = tf * idf.get(gram, default)
        self.norms = [math.sqrt(sum(w * w for w in order.values())) for order in self.weights]
        self.length = length


class CiderD:
    """Scores captions of training images against their references.

    ``references`` maps an image key to its reference captions, each a list of words.
    """

    def __init__(self, references: dict[str, list[list[str]]]) -> None:
        if not references:
            raise ValueError("CIDEr-D needs at least one image with references")
        document_frequency: Counter[tuple[str, ...]] = Counter()
        cooked: dict[str, list[tuple[Ngrams, int]]] = {}
        for key, refs in references.items():
            cooked[key] = [(ngram_counts(words), len(words)) for words in refs]
            document_frequency.update({g for counts, _ in cooked[key] for g in counts})
        self._log_images = math.log(float(len(references)))
        self._idf = {g: self._log_images - math.log(df) for g, df in document_frequency.items()}
        self._refs = {
            key: [_Vector(counts, length, self._idf, self._log_images) for counts, length in items]
            for key, items in cooked.items()
        }

    def __contains__(self, key: str) -> bool:
        return key in self._refs

    def score(self, key: str, words: Sequence[str]) -> float:
        """CIDEr-D of one caption on pycocoevalcap's scale (the papers print 100x this)."""
        refs = self._refs[key]
        hyp = _Vector(ngram_counts(words), len(words), self._idf, self._log_images)
        total = 0.0
        for ref in refs:
            penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * _SIGMA**2))
            for n in range(4):
                if hyp.norms[n] == 0 or ref.norms[n] == 0:
                    continue
                ref_weights = ref.weights[n]
                overlap = sum(
                    min(w, ref_weights[g]) * ref_weights[g]
                    for g, w in hyp.weights[n].items()
                    if g in ref_weights
                )
                total += penalty * overlap / (hyp.norms[n] * ref.norms[n])
        return 10.0 * total / (4 * len(refs))
