"""Phase C metrics as pure functions (docval_format.md section 3).

- ``anls``: the standard ANLS of DocVQA: 1 - normalised Levenshtein distance (case-insensitive, stripped),
  zeroed when the distance is >= ``tau`` (0.5), max over all gold answers.
- ``anls_lenient``: the original Phase C script's variant: no threshold, a single reference. It is never lower
  than ``anls`` for the same reference, so numbers from the two are not comparable.
- ``iou``: intersection over union of ``[x1, y1, x2, y2]`` pixel boxes; a missing, malformed, inverted or
  zero-area box scores 0.
- ``map_50_95``: the DocVAL authors' mAP@[0.50:0.95]: mean over t = 0.50, 0.55, ..., 0.95 of the fraction of
  predictions with IoU >= t.
- ``accuracy_at``: fraction of predictions with IoU >= a threshold (0.5 by default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings, by code point."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _normalise(text: str) -> str:
    return text.strip().lower()


def similarity(prediction: str, gold: str) -> float:
    """1 - normalised Levenshtein distance; two empty strings are identical (1.0)."""
    p, g = _normalise(prediction), _normalise(gold)
    longest = max(len(p), len(g))
    return 1.0 if longest == 0 else 1.0 - levenshtein(p, g) / longest


def anls(prediction: str | None, golds: Sequence[str] | str, tau: float = 0.5) -> float:
    """Standard ANLS for one question; a missing prediction scores 0."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("anls needs at least one gold answer")
    if prediction is None:
        return 0.0
    scores = [similarity(prediction, g) for g in golds]
    return max(s if 1.0 - s < tau else 0.0 for s in scores)


def anls_lenient(prediction: str | None, gold: str) -> float:
    """The original Phase C score: no threshold, one reference."""
    return 0.0 if prediction is None else similarity(prediction, gold)


def _valid_box(box: Sequence[float] | None) -> bool:
    return (box is not None and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
            and box[0] < box[2] and box[1] < box[3])


def iou(pred: Sequence[float] | None, gold: Sequence[float] | None) -> float:
    if not (_valid_box(pred) and _valid_box(gold)):
        return 0.0
    assert pred is not None and gold is not None
    w = min(pred[2], gold[2]) - max(pred[0], gold[0])
    h = min(pred[3], gold[3]) - max(pred[1], gold[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gold[2] - gold[0]) * (gold[3] - gold[1]) - inter
    return inter / union if union > 0 else 0.0


def accuracy_at(ious: Iterable[float], threshold: float = 0.5) -> float:
    values = list(ious)
    return sum(v >= threshold for v in values) / len(values) if values else 0.0


def map_50_95(ious: Iterable[float]) -> float:
    values = list(ious)
    return sum(accuracy_at(values, t) for t in MAP_THRESHOLDS) / len(MAP_THRESHOLDS) if values else 0.0
