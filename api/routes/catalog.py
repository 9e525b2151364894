"""What can be tuned: registered objectives and the datasets a spec can name."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Read
from api.schemas import DatasetOut, ObjectiveOut
from tuner.data import dataset_catalog
from tuner.objective import list_objectives

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Read])


@router.get("/objectives", response_model=list[ObjectiveOut], summary="Model families to tune")
def objectives() -> list[ObjectiveOut]:
    return [ObjectiveOut.model_validate(o) for o in list_objectives()]


@router.get("/datasets", response_model=list[DatasetOut], summary="Datasets a spec can name")
def datasets() -> list[DatasetOut]:
    return [DatasetOut.model_validate(d) for d in dataset_catalog()]
