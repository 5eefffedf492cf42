"""Phase C metrics as pure functions (docval_format.md section 3).

- ``anls``: ANLS exactly as the DocVQA scoring script (RRC) computes it for one question: both strings lower-cased,
  stripped and their inner whitespace collapsed to one space; distance = Levenshtein(normalised) / max of the
  *raw* strings' lengths (the script measures ``len(s.upper())`` of the unnormalised answers); score = 1 - the
  smallest distance over the gold answers, set to 0 when it is below 1 - ``tau`` (a score of exactly 0.5 is kept).
- ``anls_lenient``: the original Phase C script's score: lower-cased and stripped (no whitespace collapsing), no
  threshold, a single reference, an empty string matching only an empty string. Usually higher than ``anls`` on
  the same reference (no threshold), lower where only inner whitespace differs: the two are not comparable.
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

# Metrics logged by --eval-generate at each evaluation as "eval_<name>" (any may be metric_for_best_model); each is
# the evaluation summary field of the same name, with the same meaning. Defined here, below both build (which checks
# metric_for_best_model) and evaluate (which computes them).
GENERATION_METRICS = ("anls_standard", "anls_lenient", "iou", "map_50_95", "acc_iou_50", "cot_compliance")
# Names that meant something under an earlier release: eval_anls was the standard ANLS.
RENAMED_METRICS = {"anls": "anls_standard"}


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


def _collapse(text: str) -> str:
    """The DocVQA script's normalisation: lower-cased, stripped, inner whitespace runs collapsed to one space."""
    return " ".join(text.strip().lower().split())


def anls(prediction: str | None, golds: Sequence[str] | str, tau: float = 0.5) -> float:
    """Standard ANLS for one question (the DocVQA scoring script's); a missing prediction scores 0."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("anls needs at least one gold answer")
    if prediction is None:
        return 0.0
    distances = []
    for gold in golds:
        # The script divides by the longer of the raw answers (upper-cased), not of the normalised ones.
        length = max(len(gold.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(_collapse(gold), _collapse(prediction)) / length)
    score = 1.0 - min(distances)
    return 0.0 if score < 1.0 - tau else score


def anls_lenient(prediction: str | None, gold: str) -> float:
    """The original Phase C score: no threshold, one reference; a missing prediction scores 0."""
    if prediction is None:
        return 0.0
    if not prediction or not gold:  # Phase C tests emptiness before stripping
        return 1.0 if not prediction and not gold else 0.0
    p, g = prediction.lower().strip(), gold.lower().strip()
    longest = max(len(p), len(g))
    return 1.0 if longest == 0 else max(0.0, 1.0 - levenshtein(p, g) / longest)


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
