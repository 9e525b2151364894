"""Datasets: bundled, synthetic and file sources load into sound, deterministic splits."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tuner import data as data_module
from tuner.data import DatasetError, dataset_catalog, load_dataset
from tuner.settings import get_settings
from tuner.spec import BUNDLED_DATASETS, FILE_DATASETS, DatasetSpec

SIZES = {  # name: (rows, features, classes)
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
    "diabetes": (442, 10, 0),
    "synthetic_classification": (1000, 20, 2),
    "synthetic_regression": (1000, 20, 0),
}


def spec(**fields: Any) -> DatasetSpec:
    return DatasetSpec(**fields)


def fresh(s: DatasetSpec, root: Path | None = None) -> data_module.Dataset:
    """Load bypassing the per-process cache, to prove the work itself is repeatable."""
    data_module._load_cached.cache_clear()
    return load_dataset(s, root)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.mark.parametrize("name", list(SIZES))
def test_builtin_datasets_load_with_their_shapes_and_task(name: str) -> None:
    rows, features, classes = SIZES[name]
    d = load_dataset(spec(name=name))
    assert d.task == BUNDLED_DATASETS[name]
    assert (d.n_features, d.n_classes) == (features, classes)
    splits = [(d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)]
    assert sum(len(x) for x, _ in splits) == rows
    assert len(d.x_val) == pytest.approx(0.2 * rows, abs=1)
    for x, y in splits:
        assert x.dtype == torch.float32 and x.shape[1] == features and len(y) == len(x)
        assert y.dtype == (torch.int64 if classes else torch.float32) and y.ndim == 1
    if classes:
        assert set(d.y_train.tolist()) == set(range(classes))
    assert d.image_shape == ((1, 8, 8) if name == "digits" else None)
    assert len(d.fingerprint) == 64


def test_split_is_stratified() -> None:
    d = load_dataset(spec(name="iris"))
    for y in (d.y_train, d.y_val, d.y_test):
        counts = torch.bincount(y).tolist()
        assert max(counts) - min(counts) <= 1, counts


def test_split_is_deterministic_and_follows_split_seed() -> None:
    a, b = fresh(spec(name="wine")), fresh(spec(name="wine"))
    assert a is not b
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_test, b.y_test)
    assert a.fingerprint == b.fingerprint
    c = fresh(spec(name="wine", split_seed=1))
    assert not torch.equal(a.x_val, c.x_val)
    assert a.fingerprint != c.fingerprint


def test_loads_are_cached_per_process() -> None:
    assert load_dataset(spec(name="iris")) is load_dataset(spec(name="iris"))
    assert load_dataset(spec(name="iris")) is not load_dataset(spec(name="iris", split_seed=3))


def test_standardisation_uses_train_statistics_only() -> None:
    d = load_dataset(spec(name="breast_cancer"))
    assert torch.allclose(d.x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(d.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert d.x_val.mean(0).abs().max() > 1e-3  # val was not fitted
    assert d.x_mean is not None and d.x_mean.shape == (30,)


def test_regression_targets_standardised_on_train_with_scale_kept() -> None:
    d = load_dataset(spec(name="diabetes"))
    assert d.y_train.mean().item() == pytest.approx(0, abs=1e-5)
    assert d.y_std > 10 and d.y_mean > 100  # diabetes progression units
    assert d.y_val.mean().item() != pytest.approx(0, abs=1e-4)


def test_zero_test_fraction_gives_empty_test_tensors() -> None:
    d = load_dataset(spec(name="iris", test_fraction=0))
    assert d.x_test.shape == (0, 4) and d.y_test.shape == (0,)
    assert len(d.x_train) + len(d.x_val) == 150


def test_to_moves_every_tensor() -> None:
    moved = load_dataset(spec(name="iris")).to("meta")
    tensors = [moved.x_train, moved.y_val, moved.x_test, moved.x_mean, moved.x_std]
    assert all(t is not None and t.device.type == "meta" for t in tensors)


def test_synthetic_options_shape_the_data() -> None:
    options = {"n_samples": 300, "n_features": 6, "n_informative": 3, "n_classes": 4}
    d = load_dataset(spec(name="synthetic_classification", options=options))
    assert (d.n_features, d.n_classes) == (6, 4)
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 300
    r = load_dataset(spec(name="synthetic_regression", options={"n_samples": 50, "noise": 0}))
    assert r.task == "regression" and len(r.x_train) == 30


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("synthetic_classification", {"n_sample": 10}, "no option 'n_sample'; its options"),
        ("synthetic_classification", {"n_informative": 30}, "must not exceed n_features"),
        ("synthetic_classification", {"n_classes": 9, "n_informative": 2}, "n_informative >="),
        ("synthetic_classification", {"n_samples": 12.5}, "whole number"),
        ("synthetic_classification", {"flip_y": True}, "must be a number"),
        ("synthetic_regression", {"n_samples": 5}, "between 10 and"),
        ("synthetic_regression", {"noise": -1}, "between 0 and"),
        ("iris", {"n_samples": 10}, "takes no options; remove options"),
    ],
)
def test_bad_options_are_refused_with_advice(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec(name=name, options=options))


def test_size_limit_refuses_oversized_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "max_dataset_mb", 0.01)
    with pytest.raises(DatasetError, match="TUNER_MAX_DATASET_MB"):
        load_dataset(spec(name="synthetic_regression", options={"n_samples": 5000}))
    write_csv(tmp_path / "big.csv", ["a", "target"], [[i, i % 2] for i in range(2000)])
    with pytest.raises(DatasetError, match="over the limit"):
        load_dataset(spec(name="csv", path="big.csv", target="target"), tmp_path)


def test_csv_with_text_labels_is_a_classification(tmp_path: Path) -> None:
    rows = [[i, i * 0.5 + (j := i % 3), ["cat", "dog", "eel"][j]] for i in range(60)]
    (tmp_path / "sub").mkdir()
    write_csv(tmp_path / "sub" / "pets.csv", ["a", "b", "kind"], rows)
    d = load_dataset(spec(name="csv", path="sub/pets.csv", target="kind"), tmp_path)
    assert d.task == "classification" and d.n_features == 2 and d.n_classes == 3
    assert d.classes == ("cat", "dog", "eel")
    assert torch.bincount(d.y_val).tolist() == [4, 4, 4]


def test_csv_task_is_inferred_or_taken_from_the_spec(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_csv(tmp_path / "r.csv", ["x", "y"], [[v, 2 * v + 0.3] for v in rng.normal(size=40)])
    write_csv(tmp_path / "c.csv", ["x", "y"], [[v, int(v > 0) * 5] for v in rng.normal(size=40)])
    assert load_dataset(spec(name="csv", path="r.csv", target="y"), tmp_path).task == "regression"
    c = load_dataset(spec(name="csv", path="c.csv", target="y"), tmp_path)
    assert c.task == "classification" and c.classes == ("0", "5")
    forced = spec(name="csv", path="c.csv", target="y", task="regression")
    assert load_dataset(forced, tmp_path).task == "regression"


@pytest.mark.parametrize(
    ("header", "rows", "target", "message"),
    [
        (["a", "b"], [[1, 0]] * 20, "label", "no column 'label'; its columns: a, b"),
        (["a", "y"], [[1, 0]] * 10 + [["red", 1]] * 10, "y", "row 11 column 'a' is not a number"),
        (["a", "y"], [[1, 0]] * 10 + [["", 1]] * 10, "y", "fill empty cells"),
        (["a", "y"], [[1, 0]] * 10 + [[1, ""]] * 10, "y", "empty 'y' cells"),
        (["a", "y"], [[1, "x"]] * 20, "y", "one class only"),
    ],
)
def test_bad_csv_is_refused_with_advice(
    tmp_path: Path, header: list[str], rows: list[list[Any]], target: str, message: str
) -> None:
    write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec(name="csv", path="bad.csv", target=target), tmp_path)


def test_npz_loads_and_keeps_image_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.normal(size=(40, 2, 3, 3)), y=np.arange(40) % 2)
    d = load_dataset(spec(name="npz", path="img.npz"), tmp_path)
    assert d.image_shape == (2, 3, 3) and d.n_features == 18 and d.task == "classification"
    np.savez(tmp_path / "flat.npz", X=rng.normal(size=(40, 3)), y=rng.normal(size=40))
    assert load_dataset(spec(name="npz", path="flat.npz"), tmp_path).task == "regression"


def test_npz_with_object_arrays_or_missing_keys_is_refused(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}] * 20, dtype=object)
    np.savez(tmp_path / "obj.npz", X=objects, y=np.arange(20) % 2)
    with pytest.raises(DatasetError, match="object arrays are refused"):
        load_dataset(spec(name="npz", path="obj.npz"), tmp_path)
    np.savez(tmp_path / "nolabel.npz", X=np.zeros((20, 2)))
    with pytest.raises(DatasetError, match="lacks array y; it holds X"):
        load_dataset(spec(name="npz", path="nolabel.npz"), tmp_path)
    np.save(tmp_path / "plain.npy", np.zeros((20, 2)))
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        load_dataset(spec(name="npz", path="plain.npy"), tmp_path)


def test_csv_with_one_huge_cell_is_refused_without_padding_every_cell(tmp_path: Path) -> None:
    """One 130,000-character cell among 200,000 short rows: a fixed-width text table of
    this file (1 MB) would need 97 GiB."""
    for column, message in (("a", "X has 1 missing or infinite"), ("y", "at most 200")):
        cell = ("1" if column == "a" else "x") * 130_000
        with (tmp_path / "wide.csv").open("w") as fh:
            fh.write("a,y\n" + (f"{cell},x\n" if column == "a" else f"1,{cell}\n"))
            fh.writelines("1,x\n" if i % 2 else "2,z\n" for i in range(200_000))
        with pytest.raises(DatasetError, match=message):
            fresh(spec(name="csv", path="wide.csv", target="y"), tmp_path)


def test_npz_whose_arrays_are_not_what_they_claim_is_refused(tmp_path: Path) -> None:
    y = io.BytesIO()
    np.save(y, np.arange(10) % 2)
    claims_745_gib = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        claims_745_gib, {"descr": "<f8", "fortran_order": False, "shape": (10**11, 1)}
    )
    claims_745_gib.write(bytes(80))
    for name, member, message in (
        ("bomb.npz", claims_745_gib.getvalue(), r"X claims shape \(100000000000, 1\)"),
        ("text.npz", b"notnpy", "X is not a numpy array"),
    ):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("X.npy", member)
            archive.writestr("y.npy", y.getvalue())
        with pytest.raises(DatasetError, match=message):
            fresh(spec(name="npz", path=name), tmp_path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no file 'nope\.csv' under the data root"):
        load_dataset(spec(name="csv", path="nope.csv", target="y"), tmp_path)


@pytest.mark.parametrize("path", ["../secret.csv", "/etc/passwd", "a/../../secret.csv"])
def test_paths_leaving_the_data_root_are_refused(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_csv(tmp_path / "secret.csv", ["a", "y"], [[1, 0], [2, 1]] * 10)
    with pytest.raises(ValidationError, match="relative to the data root"):
        spec(name="csv", path=path, target="y")
    # The loader checks again, whatever built the spec.
    unchecked = DatasetSpec.model_construct(name="csv", path=path, target="y", options={})
    with pytest.raises(DatasetError, match="data root"):
        load_dataset(unchecked, root)


def test_symlinks_are_followed_only_inside_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    rows = [[i, i % 2] for i in range(20)]
    write_csv(tmp_path / "outside.csv", ["a", "y"], rows)
    write_csv(root / "inside.csv", ["a", "y"], rows)
    (root / "escape.csv").symlink_to(tmp_path / "outside.csv")
    (root / "alias.csv").symlink_to(root / "inside.csv")
    with pytest.raises(DatasetError, match="outside the data root"):
        load_dataset(spec(name="csv", path="escape.csv", target="y"), root)
    assert load_dataset(spec(name="csv", path="alias.csv", target="y"), root).n_features == 1


def test_catalog_lists_every_dataset_with_options() -> None:
    catalog = {entry["name"]: entry for entry in dataset_catalog()}
    assert set(catalog) == set(BUNDLED_DATASETS) | set(FILE_DATASETS)
    assert catalog["digits"]["task"] == "classification" and not catalog["digits"]["needs_path"]
    assert catalog["csv"]["needs_path"] and catalog["csv"]["needs_target"]
    synthetic = catalog["synthetic_classification"]["options"]
    assert synthetic["n_samples"]["default"] == 1000 and "seed" in synthetic
    assert set(catalog["synthetic_regression"]["options"]) >= {"noise", "n_informative"}
