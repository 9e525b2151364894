"""Hostile and mistaken input: every case is a 4xx that says what to change, and
nothing is written (job rows, events, Optuna studies and trials are counted).

The last tests read the source itself for what must never be there: code, pickle,
unsafe loads and SQL built from strings.
"""

from __future__ import annotations

import ast
import json
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from secure_app import Service, make_service
from specs import tiny_spec

from tuner.objective import get_objective
from tuner.spec import StudySpec

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("tuner", "api") for p in (ROOT / d).rglob("*.py"))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    service = make_service(tmp_path_factory.mktemp("bad-input"))
    (service.data_root / "shared").mkdir(parents=True)
    return service


def _spec(**overrides: Any) -> bytes:
    return json.dumps(tiny_spec(**overrides)).encode()


def _space(**dims: Any) -> bytes:
    return _spec(search_space=dims)


def _all_fixed() -> dict[str, Any]:
    """Every dimension the mlp searches by default, fixed to one value."""
    fixed: dict[str, Any] = {}
    for dim, value in get_objective("mlp").default_space("classification").items():
        if hasattr(value, "low"):
            fixed[dim] = value.low
        elif hasattr(value, "choices"):
            choices = value.choices
            fixed[dim] = next(iter(choices)) if isinstance(choices, dict) else choices[0]
        else:
            fixed[dim] = value
    return fixed


CASES: list[tuple[str, bytes, int, str]] = [
    ("unknown top-level field", _spec(nmae="x"), 422, "nmae: unknown field; remove it"),
    ("a storage URL", _spec(storage="sqlite:////etc/x.db"), 422, "storage: unknown field"),
    ("code in the dataset", _spec(dataset={"name": "iris", "loader": "os.system"}), 422,
     "dataset.loader: unknown field"),
    ("wrong type: n_trials", _spec(budget={"n_trials": "many"}), 422,
     "budget.n_trials: Input should be a valid integer"),
    ("wrong type: name", _spec(name=5), 422, "name: Input should be a valid string"),
    ("wrong type: body is a list", b"[1, 2]", 422, "valid dictionary"),
    ("empty body", b"", 422, "body: Field required"),
    ("not JSON", b"{name: x", 422, "not valid JSON"),
    ("low > high", _space(lr={"low": 0.1, "high": 0.01}), 422,
     "low (0.1) must be less than high (0.01)"),
    ("low == high", _space(lr={"low": 0.1, "high": 0.1}), 422,
     "to fix a value, write it plainly"),
    ("log with low 0", _space(lr={"low": 0, "high": 0.1, "log": True}), 422,
     "a log range needs low > 0"),
    ("log with low < 0", _space(weight_decay={"low": -1, "high": 0.1, "log": True}), 422,
     "a log range needs low > 0"),
    ("infinite bound", b'{"name": "x", "dataset": {"name": "iris"}, "search_space": '
     b'{"lr": {"low": -Infinity, "high": 1}}}', 422, "finite"),
    ("n_trials 10^9", _spec(budget={"n_trials": 10**9}), 422, "budget.n_trials"),
    ("257 choices", _space(width={"choices": list(range(1, 258))}), 422, "at most 256"),
    ("10^6 choices", _space(width={"choices": list(range(1, 10**6))}), 413,
     "TUNER_MAX_BODY_KB"),
    ("10^5 nested lists", b"[" * 10**5 + b"]" * 10**5, 422, "nests too deeply"),
    ("nested lists in a spec", b'{"name": "x", "dataset": {"name": "iris"}, "search_space": '
     b'{"lr": ' + b"[" * 5000 + b"]" * 5000 + b"}}", 422, "nests too deeply"),
    ("non-UTF-8 bytes", b'{"name": "\xff\xfe\xfa"}', 422, "not UTF-8"),
    ("../ path", _spec(dataset={"name": "csv", "path": "../../etc/passwd", "target": "y"}), 422,
     "without '..'"),
    ("absolute path", _spec(dataset={"name": "csv", "path": "/etc/passwd", "target": "y"}), 422,
     "relative to the data root"),
    ("missing file", _spec(dataset={"name": "csv", "path": "shared/none.csv", "target": "y"}),
     422, "no file 'shared/none.csv'"),
    ("path in a bundled dataset", _spec(dataset={"name": "iris", "path": "x.csv"}), 422,
     "remove path"),
    ("unknown objective", _spec(objective="resnet9000"), 422, "registered: cnn, mlp"),
    ("an import path as objective", _spec(objective="os:system"), 422, "unknown objective"),
    ("unknown dataset", _spec(dataset={"name": "mnist"}), 422, "dataset.name: Input should be"),
    ("unknown sampler", _spec(sampler={"name": "bayes"}), 422, "sampler.name: Input should be"),
    ("unknown pruner", _spec(pruner={"name": "sometimes"}), 422, "pruner.name: Input should be"),
    ("unknown optimizer", _space(optimizer="lbfgs"), 422, "unknown optimizer 'lbfgs'"),
    ("unknown loss", _space(loss={"choices": ["hinge", "focal"]}), 422, "unknown loss 'hinge'"),
    ("unknown metric", _spec(metrics=[{"name": "val_vibes"}]), 422, "unknown metric"),
    ("unknown objective parameter", _space(layers=3), 422, "has no parameter 'layers'"),
    ("everything fixed, 2 trials", _spec(n_trials=2, search_space=_all_fixed()), 422,
     "every dimension of search_space is fixed"),
    ("two metrics with cmaes", _spec(
        metrics=[{"name": "val_accuracy"}, {"name": "n_params"}], sampler={"name": "cmaes"}),
     422, "sampler 'cmaes' cannot optimise 2 metrics"),
    ("threshold lower > upper", _spec(pruner={"name": "threshold", "lower": 1, "upper": 0}),
     422, "lower (1) must be below its upper (0)"),
    ("a 401-digit bound", _space(lr={"low": 0, "high": 10**400}), 422,
     "search_space.lr.high: a whole number too large"),
    ("a 401-digit value", _space(batch_size=10**400), 422,
     "search_space.batch_size: a whole number too large"),
    ("a 401-digit choice", _space(width={"choices": [8, 10**400]}), 422,
     "search_space.width.choices.1: a whole number too large"),
    ("an integer range with a fractional step",
     _space(batch_size={"low": 16, "high": 64, "step": 0.5}), 422,
     "search_space.batch_size: batch_size is a whole number: low, high and step must be"),
    ("a zero batch size", _space(batch_size=0), 422, "must be positive, got 0"),
    ("bad Idempotency-Key", _spec(), 422, "Idempotency-Key"),
]


@pytest.mark.parametrize(("case", "body", "status", "advice"), CASES, ids=[c[0] for c in CASES])
def test_bad_job_is_refused_with_advice_and_nothing_written(
    service: Service, case: str, body: bytes, status: int, advice: str
) -> None:
    headers = {"content-type": "application/json"}
    if case == "bad Idempotency-Key":
        headers["Idempotency-Key"] = "k" * 201
    before = service.counts()
    started = time.monotonic()
    answer = service.client().post("/v1/jobs", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert advice in answer.json()["detail"], answer.json()["detail"]
    assert str(service.data_root) not in answer.text  # no server paths for clients
    assert service.counts() == before
    assert time.monotonic() - started < 30  # never a hang, whatever the input


def test_symlink_out_of_the_data_root_is_refused(service: Service, tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("a,y\n1,0\n")
    (service.data_root / "shared" / "link.csv").symlink_to(outside)
    before = service.counts()
    answer = service.client().post(
        "/v1/jobs", json=tiny_spec(dataset={"name": "csv", "path": "shared/link.csv",
                                            "target": "y"}),
    )
    assert answer.status_code == 422
    assert "leads outside the data root" in answer.json()["detail"]
    assert service.counts() == before


def test_one_trial_of_a_fixed_space_is_allowed(service: Service) -> None:
    spec = tiny_spec(search_space=_all_fixed(), budget={"n_trials": 1, "max_epochs": 2})
    assert service.client().post("/v1/jobs", json=spec).status_code == 201


def test_objectives_come_only_from_entry_points(service: Service) -> None:
    registered = sorted(ep.name for ep in entry_points(group="tuner.objectives"))
    answer = service.client().post("/v1/jobs", json=tiny_spec(objective="tuner.objective:MLP"))
    assert answer.status_code == 422
    assert f"registered: {', '.join(registered)}" in answer.json()["detail"]


def _field_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        names |= set(schema.get("properties", {}))
        for value in schema.values():
            names |= _field_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _field_names(value)
    return names


def test_the_spec_has_no_field_for_code_imports_or_storage() -> None:
    names = _field_names(StudySpec.model_json_schema())
    forbidden = ("code", "module", "import", "callable", "class", "script", "command",
                 "storage", "database", "pickle", "eval")
    assert not [n for n in names if any(word in n.lower() for word in forbidden)]
    assert StudySpec.model_config.get("extra") == "forbid"


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(func: ast.expr) -> str:
    """``np.load`` -> "np.load", ``eval`` -> "eval"."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_pickle_unsafe_loads_or_dynamic_code_in_the_service() -> None:
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(m.split(".")[0] in ("pickle", "marshal", "shelve", "dill") for m in modules):
                    problems.append(f"{path.name}:{node.lineno} imports a pickle module")
        for call in _calls(tree):
            name, where = _name(call.func), f"{path.name}:{call.lineno}"
            if name in ("eval", "exec", "compile", "__import__", "importlib.import_module"):
                problems.append(f"{where} {name}()")
            if name.endswith("torch.load") and _keyword(call, "weights_only") is not True:
                problems.append(f"{where} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
                problems.append(f"{where} np.load without allow_pickle=False")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where} {name} (use yaml.safe_load)")
    assert problems == []


def test_no_sql_built_from_strings() -> None:
    """SQL text is a constant; values go as bound parameters."""
    problems = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            name = _name(call.func)
            if not (name in ("text", "sa.text", "sqlalchemy.text") or name.endswith(
                (".execute", ".exec_driver_sql", "executescript")
            )):
                continue
            if call.args and _built(call.args[0]):
                problems.append(f"{path.name}:{call.lineno} {name}() of a built string")
    assert problems == []


def _built(node: ast.expr) -> bool:
    """A string made at run time from something other than module constants (PRAGMAs take
    no bound parameters, so ``f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"`` is fine)."""
    if isinstance(node, ast.JoinedStr):
        return not all(
            isinstance(part, ast.Constant)
            or (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
                and part.value.id.isupper())
            for part in node.values
        )
    return ( (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add))
        or (isinstance(node, ast.Call) and _name(node.func).endswith(".format"))
    )


def test_the_source_checks_would_catch_a_violation() -> None:
    """The AST checks above see what they look for."""
    tree = ast.parse('conn.execute(text(f"SELECT {x}"))\ntorch.load(p)\nc.execute("%s" % x)\n')
    found = [_name(c.func) for c in _calls(tree)]
    assert "conn.execute" in found and "torch.load" in found
    text_call = next(c for c in _calls(tree) if _name(c.func) == "text")
    assert _built(text_call.args[0])
    assert _built(ast.parse('"%s" % x', mode="eval").body)
    assert not _built(ast.parse('f"PRAGMA a = {LIMIT}"', mode="eval").body)
