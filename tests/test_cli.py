"""The tuner CLI: run -> export -> train reproduces the trial; mistakes are one red line."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from tuner.cli import app
from tuner.spec import StudySpec, load_spec
from tuner.storage import make_storage

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture
def write_spec(make_spec: Callable[..., StudySpec]) -> Callable[..., Path]:
    """Write the tiny spec (named cli-tiny, tpe) as YAML; overrides as for make_spec."""

    def write(path: Path, **overrides: Any) -> Path:
        spec = make_spec(**{"name": "cli-tiny", "sampler": {"name": "tpe", "seed": 0}, **overrides})
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
        return path

    return write


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


def row(output: str, name: str) -> list[str]:
    """The cells of the table row that starts with ``name``."""
    line = next(line for line in output.splitlines() if re.search(rf"\b{name}\b", line))
    return [cell.strip() for cell in re.split(r"[│|]", line) if cell.strip()]


def test_run_export_train_reproduces_the_trial_metric(
    tmp_path: Path, sqlite_url: str, write_spec: Callable[..., Path]
) -> None:
    spec_file = write_spec(tmp_path / "spec.yaml")
    code, out = invoke("run", str(spec_file), "--storage", sqlite_url, "--device", "cpu")
    assert code == 0, out
    assert "cli-tiny" in out and "3 complete" in out and "top trials" in out

    code, out = invoke("show", "--storage", sqlite_url)
    assert code == 0 and "cli-tiny" in out
    code, out = invoke("show", "cli-tiny", "--storage", sqlite_url)
    assert code == 0 and "val_accuracy" in out

    best = tmp_path / "best.yaml"
    code, out = invoke("export", "cli-tiny", "--storage", sqlite_url, "-o", str(best))
    assert code == 0, out
    exported = load_spec(best)
    assert exported.provenance is not None

    code, out = invoke("train", str(best), "-o", str(tmp_path))  # checked before training
    assert code == 2 and f"{tmp_path}: Is a directory" in out, out
    for name, advice in [("model.pt", "model"), ("model.safetensors.bak", "model"),
                         (".safetensors", "model")]:
        code, out = invoke("train", str(best), "-o", str(tmp_path / name))
        assert code == 2 and f"name the file {advice}.safetensors" in out, out
    assert not (tmp_path / "model.pt").exists()

    model = tmp_path / "model.safetensors"
    code, out = invoke("train", str(best), "-o", str(model), "--device", "cpu")
    assert code == 0, out
    _, retrained, trial = row(out, "val_accuracy")
    assert float(retrained) == pytest.approx(exported.provenance.metrics["val_accuracy"], rel=1e-5)
    assert retrained == trial
    assert f"reproduced trial {exported.provenance.trial_number} exactly" in out
    with safe_open(str(model), framework="pt") as f:
        assert f.keys() and "hp" in f.metadata()


def test_a_run_that_ends_at_its_timeout_shows_the_time_left(
    tmp_path: Path, sqlite_url: str, write_spec: Callable[..., Path]
) -> None:
    """Trials to spare and a timeout: the timeout ends the run, and the ETA says so (rich's
    estimate from the trials left read over an hour for an 8 s run)."""
    budget = {"n_trials": 100_000, "timeout_s": 2, "max_epochs": 2}
    spec_file = write_spec(tmp_path / "spec.yaml", budget=budget)
    code, out = invoke("run", str(spec_file), "--storage", sqlite_url, "--device", "cpu")
    assert code == 0, out
    last_frame = next(line for line in out.splitlines() if "/100000" in line)
    assert re.search(r"\b\d{2,}/100000 .* eta 0:00$", last_frame.strip()), last_frame


def test_train_warns_when_the_configuration_or_the_data_differs_from_the_trials(
    tmp_path: Path, sqlite_url: str, write_spec: Callable[..., Path]
) -> None:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    rows = ["a,b,c,d,label", *(",".join(map(str, [*r, t])) for r, t in zip(x, y, strict=True))]
    data = tmp_path / "data.csv"
    data.write_text("\n".join(rows) + "\n")
    dataset = {"name": "csv", "path": "data.csv", "target": "label", "task": "classification"}
    spec_file = write_spec(tmp_path / "spec.yaml", dataset=dataset,
                           budget={"n_trials": 1, "max_epochs": 2})
    root = ["--data-root", str(tmp_path)]
    assert invoke("run", str(spec_file), "--storage", sqlite_url, "--device", "cpu", *root)[0] == 0
    best = tmp_path / "best.yaml"
    assert invoke("export", "cli-tiny", "--storage", sqlite_url, "-o", str(best))[0] == 0

    code, out = invoke("train", str(best), "--device", "cpu", *root)
    assert code == 0 and "warning" not in out, out

    edited = yaml.safe_load(best.read_text())  # the user changes two values by hand
    lr = edited["search_space"]["lr"]
    edited["search_space"]["lr"], edited["seed"] = lr * 2, edited["seed"] + 1
    changed = tmp_path / "edited.yaml"
    changed.write_text(yaml.safe_dump(edited))
    code, out = invoke("train", str(changed), "--device", "cpu", *root)
    assert code == 0, out
    assert (f"warning: this is not trial 0's configuration (lr {lr:.6g} -> {lr * 2:.6g}; "
            f"seed {edited['seed'] - 1} -> {edited['seed']})") in out, out
    assert "reproduced" not in out and "differs from trial" not in out

    data.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer
    code, out = invoke("train", str(best), "--device", "cpu", *root)
    assert code == 0, out
    assert "warning: the dataset differs from the one trial 0 trained on" in out


def test_a_run_whose_every_trial_failed_says_why(
    tmp_path: Path, sqlite_url: str, write_spec: Callable[..., Path]
) -> None:
    spec_file = write_spec(
        tmp_path / "spec.yaml", budget={"n_trials": 2, "max_epochs": 2},
        search_space={"lr": {"choices": [1.0e6]}, "optimizer": "sgd"},
    )
    code, out = invoke("run", str(spec_file), "--storage", sqlite_url, "--device", "cpu")
    assert code == 2 and "no trial completed; the reasons are above" in out, out
    assert re.search(r"failed trials:\n  2 x .*lower lr", out), out
    code, out = invoke("show", "cli-tiny", "--storage", sqlite_url)
    assert code == 0 and re.search(r"failed trials:\n  2 x .*lower lr", out), out


def test_export_writes_json_to_stdout(
    tmp_path: Path, sqlite_url: str, write_spec: Callable[..., Path]
) -> None:
    spec_file = write_spec(tmp_path / "spec.yaml", budget={"n_trials": 1, "max_epochs": 2})
    assert invoke("run", str(spec_file), "--storage", sqlite_url, "--device", "cpu")[0] == 0
    code, out = invoke("export", "cli-tiny", "--storage", sqlite_url, "--format", "json")
    assert code == 0 and out.lstrip().startswith("{") and '"provenance"' in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{spec}"], "search_space.lr: low (0.1) must be less than high (0.01)"),
        (["run", "{missing}"], "cannot read"),
        (["train", "{spec_ok}"], "still searches"),
        (["show", "nope", "--storage", "{url}"], "no study named 'nope'"),
        (["export", "nope", "--storage", "{url}"], "no study named 'nope'"),
        (["run", "{spec_ok}", "--device", "tpu", "--storage", "{url}"], "unknown device"),
        (["show", "--storage", "studies/tuner.db"], "'studies/tuner.db' is not a database URL"),
        (["export", "x", "--storage", "sqlite:///{tmp}/absent.db"], "no database at"),
        (["show", "--storage", "postgresql://u@127.0.0.1:1/db"], "cannot open storage"),
        (["keys", "list", "--storage", "sqlite:///{spec_ok}/x.db"], "cannot create the folder"),
        (["worker", "--database-url", "nowhere"], "'nowhere' is not a database URL"),
        (["worker", "--storage", "nowhere"], "'nowhere' is not a database URL"),
    ],
)
def test_mistakes_are_one_red_line_and_exit_code_2(
    args: list[str], message: str, tmp_path: Path, sqlite_url: str,
    write_spec: Callable[..., Path],
) -> None:
    make_storage(sqlite_url).engine.dispose()  # a database without the studies asked for
    ok = write_spec(tmp_path / "ok.yaml")
    bad = yaml.safe_load(ok.read_text())
    bad["search_space"]["lr"] = {"low": 0.1, "high": 0.01}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    paths = {
        "spec": tmp_path / "bad.yaml",
        "spec_ok": ok,
        "missing": tmp_path / "missing.yaml",
        "url": sqlite_url,
        "tmp": tmp_path,
    }
    code, out = invoke(*(a.format(**{k: str(v) for k, v in paths.items()}) for a in args))
    assert code == 2, out
    assert message in out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_serve_and_keys_show_the_database_without_its_password(tmp_path: Path) -> None:
    code, out = invoke("serve", "--storage", "postgresql://tuner:s3cret@127.0.0.1:1/db")
    assert code == 2 and "database postgresql://tuner:***@127.0.0.1:1/db" in out, out
    assert "s3cret" not in out
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    code, out = invoke("keys", "create", "--owner", "ops", "--storage", url)
    assert code == 0 and f"in {url}" in out, out


@pytest.mark.postgres
def test_a_postgres_url_in_libpq_spelling_works(postgres_url: str) -> None:
    libpq = "postgres://" + postgres_url.split("://", 1)[1]
    code, out = invoke("show", "--storage", libpq)
    assert code == 0, out


HEAVY = ("torch", "sklearn", "tuner.engine")


def test_help_the_http_commands_and_keys_leave_torch_unimported(tmp_path: Path) -> None:
    """``tuner --help``, ``submit``, ``status``, ``watch``... only parse or talk HTTP, and
    ``tuner keys`` only touches the database (migrating it, Optuna's tables included):
    importing torch and the engine would add seconds to every call (4 s against 0.8 s
    for ``tuner keys list`` here)."""
    probe = (
        "import sys; from tuner.cli import app; "
        "app(['keys', 'create', '--help'], standalone_mode=False); "
        "app(['keys', 'list'], standalone_mode=False); "
        f"print('loaded:', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    db = tmp_path / "keys.db"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
        env={**os.environ, **ENV, "TUNER_DATABASE_URL": f"sqlite:///{db}"},
    )
    assert done.returncode == 0, done.stderr
    assert "read, submit" in done.stdout  # the help was rendered, scopes and all
    assert "no keys" in done.stdout  # the list ran against the database it created
    tables = sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    assert {("api_keys",), ("trials",)} <= set(tables)  # ours and Optuna's
    assert done.stdout.strip().endswith("loaded: []")


@pytest.mark.slow
def test_the_installed_command_runs_exports_and_trains(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """The console script as a user runs it: a real process per command, default storage."""
    tuner = str(Path(sys.executable).parent / "tuner")
    env = {**os.environ, **ENV, "TUNER_DATABASE_URL": f"sqlite:///{tmp_path / 'tuner.db'}"}

    def sh(*args: str) -> str:
        done = subprocess.run(
            [tuner, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    spec_file = write_spec(tmp_path / "spec.yaml")
    sh("run", str(spec_file), "--device", "cpu")
    sh("export", "cli-tiny", "-o", "best.yaml")
    out = sh("train", "best.yaml", "--device", "cpu")
    _, retrained, trial = row(out, "val_accuracy")
    assert retrained == trial
    bad = subprocess.run(
        [tuner, "run", "missing.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
