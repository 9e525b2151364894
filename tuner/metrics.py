"""Metrics of a trained model on one split, under the names ``tuner.spec`` knows.

``evaluate_split`` returns bare names (``accuracy``, ``r2``, ``loss``); ``train``
prefixes them with the split (``val_accuracy``). Ranking metrics that are undefined on
a split (roc_auc when a class is missing from it) are left out rather than NaN. All are
computed here with numpy (they agree with sklearn.metrics, which costs ~10x more per
call on small splits).

>>> import torch
>>> from torch import nn
>>> model = nn.Linear(2, 2)
>>> x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
>>> sorted(evaluate_split(model, x, y, "classification", nn.CrossEntropyLoss()))[:3]
['accuracy', 'average_precision', 'f1']
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from tuner.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS, Task

EVAL_CHUNK = 16384
"""Rows per forward pass when evaluating: large, but bounded in memory."""


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model outputs for ``x`` in eval mode, in large chunks, without autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return torch.cat([model(chunk) for chunk in x.split(EVAL_CHUNK)])
    finally:
        model.train(was_training)


def evaluate_split(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: Task,
    criterion: nn.Module,
    *,
    names: Collection[str] | None = None,
    target_scale: float = 1.0,
) -> dict[str, float]:
    """Metrics of ``model`` on ``(x, y)``: all of the task's, or only ``names``.

    ``loss`` is ``criterion`` on the split. ``target_scale`` (the std regression
    targets were divided by) puts mse, rmse and mae back in the target's units.
    An empty split gives ``{}``.
    """
    known = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    wanted = set(known if names is None else names)
    if wanted - known:
        raise ValueError(
            f"unknown {task} metrics {sorted(wanted - known)}; known: {', '.join(sorted(known))}"
        )
    if len(x) == 0:
        return {}
    output = predict(model, x)
    scores: dict[str, float] = {}
    if "loss" in wanted:
        with torch.inference_mode():
            scores["loss"] = criterion(output, y).item()
    wanted.discard("loss")
    if wanted and task == "classification":
        scores |= _classification(output, y, wanted)
    elif wanted:
        scores |= _regression(output, y, wanted, target_scale)
    return scores


def _classification(logits: torch.Tensor, y: torch.Tensor, wanted: set[str]) -> dict[str, float]:
    scores: dict[str, float] = {}
    if "accuracy" in wanted:  # every epoch when it is monitored: no softmax, no copy
        scores["accuracy"] = (logits.argmax(dim=1) == y).double().mean().item()
    if not wanted - {"accuracy"}:
        return scores
    logits = logits.double()
    if "log_loss" in wanted:
        scores["log_loss"] = F.cross_entropy(logits, y).item()
    proba = torch.softmax(logits, dim=-1).cpu().numpy()
    truth = y.cpu().numpy()
    pred = proba.argmax(axis=1)
    if wanted & {"precision", "recall", "f1"}:
        scores |= _precision_recall_f1(truth, pred)
    k = proba.shape[1]
    ranked = wanted & {"roc_auc", "average_precision"}
    if ranked and len(np.unique(truth)) == k:  # undefined when a class is absent
        # One vs rest per class, macro-averaged; a binary task scores class 1 only.
        columns = np.array([1] if k == 2 else range(k))
        score = proba[:, 1:] if k == 2 else proba  # no copy of the outputs
        positive = truth[:, None] == columns
        if "roc_auc" in ranked:
            scores["roc_auc"] = float(np.mean(_roc_auc(positive, score)))
        if "average_precision" in ranked:
            scores["average_precision"] = float(np.mean(_average_precision(positive, score)))
    return {name: v for name, v in scores.items() if name in wanted}


def _precision_recall_f1(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Macro averages over the labels seen in truth or predictions, 0 where undefined
    (sklearn's ``precision_recall_fscore_support(average="macro", zero_division=0)``)."""
    labels = np.union1d(truth, pred)
    tp = np.array([np.sum((pred == c) & (truth == c)) for c in labels], dtype=float)
    predicted = np.array([np.sum(pred == c) for c in labels], dtype=float)
    actual = np.array([np.sum(truth == c) for c in labels], dtype=float)
    return {
        "precision": float(np.mean(_ratio(tp, predicted))),
        "recall": float(np.mean(_ratio(tp, actual))),
        "f1": float(np.mean(_ratio(2 * tp, predicted + actual))),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _roc_auc(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of each column, as the Mann-Whitney statistic (ties
    count half): all columns in one ranking."""
    ranks = rankdata(score, axis=0)
    n_pos = positive.sum(axis=0)
    n_neg = len(positive) - n_pos
    return ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _average_precision(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision of each column: precision at each distinct threshold weighted
    by the recall it adds (no interpolation, as sklearn's ``average_precision_score``).
    All columns are sorted at once; the ends of their tie groups are then taken column
    after column, so one pass weighs every column's thresholds."""
    order = np.argsort(-score, axis=0, kind="mergesort")
    score = np.take_along_axis(score, order, axis=0)
    tps = np.cumsum(np.take_along_axis(positive, order, axis=0), axis=0)
    ends = np.ones_like(score, dtype=bool)  # the last row of each tie group
    ends[:-1] = score[1:] != score[:-1]
    column, row = np.nonzero(ends.T)  # column by column, rows in order
    precision = tps[row, column] / (row + 1)
    recall = tps[row, column] / tps[-1, column]
    added = np.diff(recall, prepend=0.0)
    first = np.r_[True, column[1:] != column[:-1]]  # a column's first threshold
    added[first] = recall[first]
    return np.bincount(column, weights=added * precision, minlength=score.shape[1])


def _regression(
    output: torch.Tensor, y: torch.Tensor, wanted: set[str], scale: float
) -> dict[str, float]:
    pred = output.reshape(-1).double()
    truth = y.double()
    err = pred - truth
    sq = (err**2).mean().item()
    scores = {"mse": sq * scale**2, "rmse": sq**0.5 * scale, "mae": err.abs().mean().item() * scale}
    spread = ((truth - truth.mean()) ** 2).sum().item()
    if spread > 0:
        scores["r2"] = 1 - (err**2).sum().item() / spread
    return {name: v for name, v in scores.items() if name in wanted}
