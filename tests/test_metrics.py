"""Split metrics agree with sklearn.metrics on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from tuner.losses import make_loss
from tuner.metrics import evaluate_split, predict
from tuner.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS

torch.set_num_threads(1)


def scored(n_classes: int, n: int = 120) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A random linear classifier and labels that partly follow it (not a perfect score)."""
    torch.manual_seed(n_classes)
    model = nn.Linear(5, n_classes)
    x = torch.randn(n, 5)
    with torch.no_grad():
        y = model(x).argmax(1)
    flip = torch.rand(n) < 0.3
    y[flip] = torch.randint(0, n_classes, (int(flip.sum()),))
    return model, x, y


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_sklearn(n_classes: int) -> None:
    model, x, y = scored(n_classes)
    got = evaluate_split(model, x, y, "classification", nn.CrossEntropyLoss())
    assert set(got) == CLASSIFICATION_METRICS
    proba = torch.softmax(predict(model, x).double(), 1).numpy()
    truth, pred = y.numpy(), proba.argmax(1)
    score = proba[:, 1] if n_classes == 2 else proba
    multi = {} if n_classes == 2 else {"multi_class": "ovr"}
    expected = {
        "accuracy": skm.accuracy_score(truth, pred),
        "f1": skm.f1_score(truth, pred, average="macro"),
        "precision": skm.precision_score(truth, pred, average="macro", zero_division=0),
        "recall": skm.recall_score(truth, pred, average="macro"),
        "roc_auc": skm.roc_auc_score(truth, score, **multi),
        "average_precision": skm.average_precision_score(truth, score, average="macro"),
        "log_loss": skm.log_loss(truth, proba),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["loss"] == pytest.approx(expected["log_loss"], abs=1e-5)
    assert 0.4 < got["accuracy"] < 1  # labels were partly shuffled


def test_ranking_metrics_are_left_out_when_a_class_is_missing() -> None:
    model, x, y = scored(3)
    keep = y != 2
    got = evaluate_split(model, x[keep], y[keep], "classification", nn.CrossEntropyLoss())
    assert "roc_auc" not in got and "average_precision" not in got
    assert all(np.isfinite(v) for v in got.values()) and "f1" in got


def test_regression_metrics_match_sklearn_in_target_units() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(80, 3)
    with torch.no_grad():
        y = model(x).squeeze(1) + 0.3 * torch.randn(80)
    mse = make_loss({"name": "mse"}, "regression")
    got = evaluate_split(model, x, y, "regression", mse, target_scale=10.0)
    assert set(got) == REGRESSION_METRICS
    pred = predict(model, x).squeeze(1).double().numpy() * 10
    truth = y.double().numpy() * 10
    assert got["mse"] == pytest.approx(skm.mean_squared_error(truth, pred), rel=1e-6)
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(truth, pred), rel=1e-6)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(truth, pred), rel=1e-6)
    assert got["r2"] == pytest.approx(skm.r2_score(truth, pred), rel=1e-6)
    assert got["loss"] == pytest.approx(got["mse"] / 100, rel=1e-5)  # loss stays standardised


def test_only_the_named_metrics_are_computed() -> None:
    model, x, y = scored(4)
    got = evaluate_split(model, x, y, "classification", nn.CrossEntropyLoss(),
                         names={"accuracy"})
    assert set(got) == {"accuracy"}
    # Accuracy alone (every epoch) takes a shorter path: the same number.
    everything = evaluate_split(model, x, y, "classification", nn.CrossEntropyLoss())
    assert got["accuracy"] == everything["accuracy"]
    with pytest.raises(ValueError, match=r"unknown classification metrics \['r2'\]"):
        evaluate_split(model, x, y, "classification", nn.CrossEntropyLoss(), names={"r2"})


def test_empty_split_has_no_metrics_and_model_mode_is_kept() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    empty = torch.empty(0, 2)
    assert evaluate_split(model, empty, torch.empty(0), "regression", nn.MSELoss()) == {}
    x = torch.randn(4, 2)
    evaluate_split(model, x, torch.tensor([0, 1, 0, 1]), "classification", nn.CrossEntropyLoss())
    assert model.training


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_ranking_and_macro_metrics_match_sklearn_with_ties_and_unpredicted_classes(
    n_classes: int,
) -> None:
    """Outputs drawn from six distinct rows tie in every column; a class the model never
    predicts counts in the macro averages as sklearn counts it."""
    rng = np.random.default_rng(n_classes)
    truth = np.r_[np.arange(n_classes), rng.integers(0, n_classes, 200)]
    palette = rng.normal(size=(6, n_classes))
    palette[:, -1] -= 10.0  # the last class is never the argmax
    logits = palette[rng.integers(0, 6, len(truth))]
    model = nn.Identity()
    x, y = torch.tensor(logits), torch.tensor(truth)
    got = evaluate_split(model, x, y, "classification", nn.CrossEntropyLoss())
    proba = torch.softmax(x.double(), 1).numpy()
    pred = proba.argmax(1)
    score = proba[:, 1] if n_classes == 2 else proba
    multi = {} if n_classes == 2 else {"multi_class": "ovr"}
    p, r, f, _ = skm.precision_recall_fscore_support(truth, pred, average="macro", zero_division=0)
    expected = {
        "precision": p, "recall": r, "f1": f,
        "roc_auc": skm.roc_auc_score(truth, score, **multi),
        "average_precision": skm.average_precision_score(truth, score, average="macro"),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
