"""Uploaded datasets: validated by parsing, capped, owned, listed and deleted by their owner."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from secure_app import Service, make_service
from sklearn.datasets import load_iris
from specs import tiny_spec


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path, max_dataset_mb=0.05)


def _iris_csv() -> bytes:
    x, y = load_iris(return_X_y=True)
    rows = ["a,b,c,d,label", *(",".join([*map(str, r), str(t)]) for r, t in zip(x, y, strict=True))]
    return ("\n".join(rows) + "\n").encode()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _csv_spec(path: str) -> dict:
    return tiny_spec(
        dataset={"name": "csv", "path": path, "target": "label", "task": "classification"}
    )


def test_upload_csv_then_tune_on_it(service: Service) -> None:
    alice = service.client(service.key("alice"))
    made = alice.post("/v1/datasets?name=iris&format=csv&target=label", content=_iris_csv())
    assert made.status_code == 201, made.text
    assert made.json()["path"] == "uploads/alice/iris.csv"
    assert (service.data_root / "uploads" / "alice" / "iris.csv").is_file()
    assert [u["name"] for u in alice.get("/v1/datasets/uploads").json()] == ["iris"]
    wrong = _csv_spec("uploads/alice/iris.csv")
    wrong["dataset"]["target"] = "species"  # checked on submit, not by a worker later
    refused = alice.post("/v1/jobs", json=wrong)
    assert refused.status_code == 422 and "has no column 'species'" in refused.json()["detail"]
    wrong["dataset"] = {**wrong["dataset"], "name": "npz", "target": None}
    refused = alice.post("/v1/jobs", json=wrong)
    assert refused.status_code == 422 and "is not an .npz archive" in refused.json()["detail"]
    assert alice.get("/v1/jobs").json()["items"] == []
    job = alice.post("/v1/jobs", json=_csv_spec("uploads/alice/iris.csv"))
    assert job.status_code == 201, job.text
    again = alice.post("/v1/datasets?name=iris&format=csv&target=label", content=_iris_csv())
    assert again.status_code == 409 and "delete it first" in again.json()["detail"]


def test_upload_npz_without_pickle(service: Service) -> None:
    alice = service.client(service.key("alice"))
    x, y = load_iris(return_X_y=True)
    made = alice.post("/v1/datasets?name=iris&format=npz", content=_npz(X=x, y=y))
    assert made.status_code == 201, made.text
    objects = _npz(X=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20))
    refused = alice.post("/v1/datasets?name=evil&format=npz", content=objects)
    assert refused.status_code == 422
    assert "without pickle" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("query", "body", "advice"),
    [
        ("name=t&format=csv&target=label", b"a,label\nx,1\ny,0\n", "is not a number"),
        ("name=t&format=csv&target=nope", _iris_csv(), "has no column 'nope'"),
        ("name=t&format=csv", _iris_csv(), "needs ?target="),
        ("name=t&format=csv&target=label", b"", "the body is empty"),
        ("name=t&format=csv&target=label", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("name=t&format=npz", b"PK\x03\x04 not really a zip", "not an .npz archive"),
        ("name=t&format=npz", _npz(X=np.zeros((20, 2))), "lacks array y"),
        ("name=../../x&format=csv&target=label", _iris_csv(), "query parameter name"),
        ("name=t&format=exe", b"MZ", "query parameter format"),
    ],
)
def test_bad_uploads_are_refused_and_not_kept(
    service: Service, query: str, body: bytes, advice: str
) -> None:
    alice = service.client(service.key("alice"))
    answer = alice.post(f"/v1/datasets?{query}", content=body)
    assert answer.status_code == 422, answer.text
    assert advice in answer.json()["detail"]
    uploads = service.data_root / "uploads"
    assert not uploads.exists() or not [p for p in uploads.rglob("*") if p.is_file()]


def test_upload_over_the_size_cap_is_413_and_not_kept(service: Service) -> None:
    alice = service.client(service.key("alice"))
    big = _iris_csv() * 20  # ~90 kB > 0.05 MB

    answer = alice.post("/v1/datasets?name=big&format=csv&target=label", content=big)
    assert answer.status_code == 413 and "TUNER_MAX_DATASET_MB" in answer.json()["detail"]

    def chunks():
        for _ in range(20):
            yield _iris_csv()

    chunked = alice.post("/v1/datasets?name=big&format=csv&target=label", content=chunks())
    assert chunked.status_code == 413
    uploads = service.data_root / "uploads"
    assert not [p for p in uploads.rglob("*") if p.is_file()]


def test_uploads_belong_to_their_owner(service: Service) -> None:
    alice = service.client(service.key("alice"))
    bob = service.client(service.key("bob"))
    admin = service.client(service.key("ops", "admin"))
    alice.post("/v1/datasets?name=iris&format=csv&target=label", content=_iris_csv())
    assert bob.get("/v1/datasets/uploads").json() == []
    before = service.counts()
    stolen = bob.post("/v1/jobs", json=_csv_spec("uploads/alice/iris.csv"))
    assert stolen.status_code == 422 and "not one of your uploads" in stolen.json()["detail"]
    for path in ("uploads/iris.csv", "uploads/bob/../alice/iris.csv", "uploads"):
        assert bob.post("/v1/jobs", json=_csv_spec(path)).status_code == 422, path
    assert service.counts() == before
    assert bob.delete("/v1/datasets/uploads/iris.csv").status_code == 404
    assert bob.delete("/v1/datasets/uploads/iris.csv?owner=alice").status_code == 404
    assert [u["owner"] for u in admin.get("/v1/datasets/uploads").json()] == ["alice"]
    assert alice.delete("/v1/datasets/uploads/iris.csv").status_code == 204
    assert alice.get("/v1/datasets/uploads").json() == []
    assert alice.delete("/v1/datasets/uploads/iris.csv").status_code == 404
    assert alice.delete("/v1/datasets/uploads/..%2F..%2Ftuner.db").status_code in (404, 422)
    assert Path(service.settings.database_url.removeprefix("sqlite:///")).exists()


def test_reading_uploads_needs_read_and_writing_needs_submit(service: Service) -> None:
    reader = service.client(service.key("alice", "read"))
    answer = reader.post("/v1/datasets?name=iris&format=csv&target=label", content=_iris_csv())
    assert answer.status_code == 403
    assert reader.get("/v1/datasets/uploads").status_code == 200
