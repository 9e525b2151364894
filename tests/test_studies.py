"""The example studies a user runs first: each is a valid spec the engine accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner import engine
from tuner.data import load_dataset
from tuner.objective import resolved_metrics
from tuner.spec import load_spec
from tuner.storage import make_storage

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))


def test_the_examples_cover_the_promised_tasks() -> None:
    specs = {path.stem: load_spec(path) for path in STUDIES}
    assert {"digits-cnn", "breast-cancer", "diabetes", "synthetic-hard", "multi-objective"} <= set(
        specs
    )
    assert specs["digits-cnn"].objective == "cnn"
    assert [m.name for m in specs["breast-cancer"].metrics] == ["val_roc_auc"]
    assert specs["diabetes"].task == "regression"
    assert len(specs["multi-objective"].metrics) == 2


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_each_example_parses_loads_and_builds_its_study(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem, "the study is named after its file, so export finds it"
    data = load_dataset(spec.dataset)
    assert resolved_metrics(spec, data.task)
    study = engine.create_study(spec, make_storage("sqlite:///:memory:"))
    assert len(study.directions) == len(resolved_metrics(spec, data.task))
    assert spec.budget.n_trials * spec.budget.max_epochs <= 2000, "keep examples a minute or two"
