"""A saved model predicts on its own: raw data in, labels or target units out.

Each test retrains a fixed spec as ``tuner train`` does (``export.retrain``, then
``save_model`` with ``fixed_hp``), loads the file into a fresh model and checks that
predictions on the raw validation rows reach the metric the retrain recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn import datasets as skdata
from specs import TINY_SPACE, tiny_spec

from tuner import export
from tuner.data import _split, load_dataset
from tuner.models import build_mlp
from tuner.spec import StudySpec, parse_spec
from tuner.train import TrainResult, train
from tuner.weights import Predictor, load_model, save_model


def _spec(dataset: dict[str, Any], objective: str = "mlp", epochs: int = 4, **hp: Any) -> StudySpec:
    """A spec with every value fixed, ready for ``tuner train`` (as ``tuner export`` writes)."""
    space = {**TINY_SPACE, "lr": 0.03, "width": 16, "loss": "cross_entropy", **hp}
    return parse_spec(
        tiny_spec(max_epochs=epochs, objective=objective, dataset=dataset, search_space=space)
    )


def _train_save_load(
    spec: StudySpec, tmp_path: Path, data_root: Path | None = None
) -> tuple[TrainResult, Predictor]:
    result = export.retrain(spec, data_root=data_root, device="cpu")
    path = save_model(result, tmp_path / "model.safetensors", export.fixed_hp(spec))
    loaded = load_model(path)
    assert loaded.model is not result.model and not loaded.model.training
    return result, loaded


def _val_rows(x: np.ndarray, y: np.ndarray, spec: StudySpec) -> tuple[np.ndarray, np.ndarray]:
    """The raw rows of the validation split (the split ``tuner.data`` makes)."""
    classification = y.dtype.kind not in "f"
    codes = np.unique(y, return_inverse=True)[1] if classification else y
    _, val, _ = _split(codes, "classification" if classification else "regression", spec.dataset)
    return x[val], y[val]


def test_regression_predicts_in_the_targets_units(tmp_path: Path) -> None:
    # Batch norm and dropout: the loaded model must be in eval mode with the running stats.
    spec = _spec({"name": "diabetes"}, epochs=5, batch_norm=True, dropout=0.2, loss="mse")
    result, loaded = _train_save_load(spec, tmp_path)
    x, y = skdata.load_diabetes(return_X_y=True)
    x_val, y_val = _val_rows(x, y, spec)
    predicted = loaded.predict(x_val)
    assert predicted.shape == (len(y_val),) and predicted.dtype == np.float64
    rmse = float(np.sqrt(np.mean((predicted - y_val) ** 2)))
    assert rmse == pytest.approx(result.metrics["val_rmse"], rel=1e-4)
    assert loaded.metrics["val_rmse"] == result.metrics["val_rmse"]
    assert loaded.predict(torch.from_numpy(x_val)) == pytest.approx(predicted)
    with pytest.raises(ValueError, match="needs a classifier"):
        loaded.predict_proba(x_val)


def test_classification_returns_the_labels_and_probabilities(tmp_path: Path) -> None:
    spec = _spec({"name": "iris"})
    result, loaded = _train_save_load(spec, tmp_path)
    x, y = skdata.load_iris(return_X_y=True)
    x_val, y_val = _val_rows(x, y, spec)
    predicted = loaded.predict(x_val)
    assert predicted.dtype.kind == "i"  # numeric labels come back as numbers
    assert np.mean(predicted == y_val) == pytest.approx(result.metrics["val_accuracy"], abs=1e-12)
    proba = loaded.predict_proba(x_val)
    assert proba.shape == (len(x_val), 3) and proba.sum(axis=1) == pytest.approx(1.0)
    assert (loaded.classes[proba.argmax(axis=1)] == predicted).all()


def test_string_labels_come_back_as_strings_without_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)) * [1.0, 50.0, 0.01] + [0.0, 200.0, 5.0]
    names = np.array(["cat", "dog", "emu"])
    y = names[(x[:, 0] > 0).astype(int) + (x[:, 1] > 200).astype(int)]
    lines = ["a,kind,b,c"] + [f"{r[0]},{k},{r[1]},{r[2]}" for r, k in zip(x, y, strict=True)]
    (tmp_path / "pets.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = _spec({"name": "csv", "path": "pets.csv", "target": "kind"}, epochs=5)
    result, _ = _train_save_load(spec, tmp_path, data_root=tmp_path)
    (tmp_path / "pets.csv").unlink()  # the weights file alone must do
    loaded = load_model(tmp_path / "model.safetensors")
    x_val, y_val = _val_rows(x, y, spec)
    predicted = loaded.predict(x_val)
    assert predicted.dtype.kind == "U" and set(predicted) <= set(names)
    assert list(loaded.classes) == ["cat", "dog", "emu"]
    assert np.mean(predicted == y_val) == pytest.approx(result.metrics["val_accuracy"], abs=1e-12)


def test_a_cnn_takes_images_or_flat_rows(tmp_path: Path) -> None:
    spec = _spec({"name": "digits"}, objective="cnn", epochs=2, depth=1, width=8)
    result, loaded = _train_save_load(spec, tmp_path)
    images = skdata.load_digits().images
    x, y = skdata.load_digits(return_X_y=True)
    x_val, y_val = _val_rows(x, y, spec)
    predicted = loaded.predict(x_val)
    assert np.mean(predicted == y_val) == pytest.approx(result.metrics["val_accuracy"], abs=1e-12)
    images_val, _ = _val_rows(images, y, spec)  # [n, 8, 8]: the one channel left out
    assert (loaded.predict(images_val) == predicted).all()
    assert (loaded.predict(images_val[:, None]) == predicted).all()  # [n, 1, 8, 8]


def test_wrong_input_shape_says_what_the_model_takes(tmp_path: Path) -> None:
    _, loaded = _train_save_load(_spec({"name": "iris"}, epochs=1), tmp_path)
    with pytest.raises(ValueError, match=r"shape \(5, 3\); this model takes \[n, 4\]"):
        loaded.predict(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"one row: x.reshape\(1, -1\)"):
        loaded.predict(np.zeros(4))


def test_the_file_holds_the_state_dict_and_json_metadata(tmp_path: Path) -> None:
    spec = _spec({"name": "iris"}, epochs=1)
    result, _ = _train_save_load(spec, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(result.model.state_dict())
    assert meta["objective"] == "mlp" and meta["task"] == "classification"
    assert (meta["n_features"], meta["n_outputs"], meta["classes"]) == ("4", "3", '["0", "1", "2"]')
    p = result.preprocessing
    for name in ("x_mean", "x_std"):  # JSON numbers read back as the exact float32 values
        assert torch.equal(torch.tensor(json.loads(meta[name])), getattr(p, name))


def test_an_older_file_gets_a_clear_error(tmp_path: Path) -> None:
    """A file as tuner wrote it before: the state_dict with hp, metrics and torch only."""
    spec = _spec({"name": "iris"}, epochs=1)
    result = export.retrain(spec, device="cpu")
    old = tmp_path / "old.safetensors"
    metadata = {"hp": "{}", "metrics": "{}", "torch": torch.__version__}
    save_file(dict(result.model.state_dict()), str(old), metadata=metadata)
    with pytest.raises(ValueError, match=r"lacks what prediction needs \(objective, task.*"
                       r"older tuner.*tuner train best.yaml -o old.safetensors"):
        load_model(old)


def test_a_result_without_an_objective_is_refused(tmp_path: Path) -> None:
    data = load_dataset(_spec({"name": "iris"}).dataset)
    model = build_mlp(4, 3, depth=1, width=4, dropout=0.0, batch_norm=False)
    result = train(model, data, {"epochs": 1}, seed=0)
    with pytest.raises(ValueError, match=r"train with tuner\.objective\.fit"):
        save_model(result, tmp_path / "m.safetensors", {})
