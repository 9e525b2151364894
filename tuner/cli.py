"""The ``tuner`` command line: run, show, export and train studies (typer + rich).

Commands import the engine inside their bodies: torch takes seconds to import, and
commands that only talk HTTP should not pay for it. Every command runs its body
inside ``user_errors()``, which turns a mistake the user can fix into one red line
and exit code 2, never a traceback.

    tuner run studies/digits-cnn.yaml
    tuner export digits-cnn -o best.yaml
    tuner train best.yaml -o model.safetensors
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuner import remote
from tuner.cli_keys import keys_app
from tuner.settings import Settings, get_settings
from tuner.spec import SpecError, load_spec

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

app = typer.Typer(
    name="tuner",
    help="Hyperparameter tuning for PyTorch models, built on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

USER_ERROR = 2

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Database URL (default: TUNER_DATABASE_URL)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DataRootOpt = Annotated[
    Path | None, typer.Option("--data-root", help="Directory of dataset files (csv, npz).")
]


# --- shared helpers ----------------------------------------------------------------


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a mistake the user can fix as one red line and exit with code 2."""
    from tuner.data import DatasetError
    from tuner.errors import UsageError

    try:
        yield
    except (SpecError, DatasetError, UsageError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR) from None
    except OSError as exc:  # a file to read or write: no such folder, no permission, ...
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(
            f"[red]error:[/red] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(USER_ERROR) from None


def _check_writable(path: Path) -> None:
    """Open ``path`` for writing now, so a bad output fails before the work that fills it."""
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab"):
        pass
    if not existed:
        path.unlink()


def _quiet_optuna() -> None:
    """Optuna logs each trial (failed ones with a traceback); the bar and table say enough."""
    import optuna

    optuna.logging.set_verbosity(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _storage(url: str | None, *, existing: bool = False) -> str:
    """The database URL to use; ``existing``: refuse a SQLite file that is not there,
    which reading would create empty (the default path is relative to the folder)."""
    url = url or get_settings().database_url
    if existing and url.startswith("sqlite:///"):
        from tuner.storage import parse_url

        database = parse_url(url).database
        if database and database != ":memory:" and not Path(database).exists():
            from tuner.errors import UsageError

            raise UsageError(
                f"no database at {Path(database).resolve()} ({url}); run tuner run here "
                "first, or pass --storage (or TUNER_DATABASE_URL) the one you ran"
            )
    return url


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _trials_table(study: optuna.Study, limit: int) -> Table:
    names = study.metric_names or [f"value {i}" for i in range(len(study.directions))]
    table = Table(title=f"top trials of {study.study_name}", title_justify="left")
    table.add_column("trial", justify="right")
    for name, direction in zip(names, study.directions, strict=True):
        table.add_column(f"{name} ({direction.name.lower()[:3]})", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("params")
    from tuner.engine import ranked_trials

    for trial in ranked_trials(study)[:limit]:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        table.add_row(
            str(trial.number), *(_fmt(v) for v in trial.values),
            _fmt(trial.user_attrs.get("epochs_run", "")), params,
        )
    return table


def _state_counts(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials"


def _failure_reasons(study: optuna.Study, most: int = 3) -> str | None:
    """The commonest reasons trials failed, one line each with their count."""
    reasons = Counter(
        str(trial.user_attrs.get("fail_reason", "no reason recorded"))
        for trial in study.get_trials(deepcopy=False)
        if trial.state.name == "FAIL"
    )
    if not reasons:
        return None
    lines = [f"  {n} x {reason[:160]}" for reason, n in reasons.most_common(most)]
    if len(reasons) > most:
        lines.append(f"  ... and {len(reasons) - most} other reasons")
    return "failed trials:\n" + "\n".join(lines)


def _progress_fields(study: optuna.Study) -> dict[str, Any]:
    """Best value so far, pruned and failed counts: the bar's extra columns."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = "-"
    if any(t.state == TrialState.COMPLETE for t in trials):
        if len(study.directions) == 1:
            best = _fmt(study.best_value)
        else:
            best = f"{len(study.best_trials)} on the Pareto front"
    return {
        "best": best,
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
    }


class _ProgressCallback:
    """Advances a rich progress bar after each trial (an Optuna study callback)."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress = progress
        self.task = task

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.progress.update(self.task, advance=1, **_progress_fields(study))


class _TimeBudget:
    """The run's deadline, when it has a timeout: whichever of the trials and the time
    runs out first ends the run, so the bar and the ETA follow that one (the job API's
    ``eta_s`` is capped the same way)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def spent(self) -> float:
        """Fraction of the time used, 0 without a timeout."""
        if self.deadline is None or self.timeout_s is None:
            return 0.0
        return min(1.0, 1 - (self.deadline - time.monotonic()) / self.timeout_s)

    def left(self, by_trials: float | None) -> float | None:
        if self.deadline is None:
            return by_trials
        by_time = max(0.0, self.deadline - time.monotonic())
        return by_time if by_trials is None else min(by_trials, by_time)


class _BudgetBar(BarColumn):
    """Filled by the trials done or the time used, whichever is further along."""

    def __init__(self, budget: _TimeBudget) -> None:
        super().__init__()
        self.budget = budget

    def render(self, task: Task) -> ProgressBar:
        bar = super().render(task)
        if bar.total:
            bar.completed = max(bar.completed, bar.total * self.budget.spent())
        return bar


class _BudgetEta(ProgressColumn):
    """Rich's estimate from the trials still to run, capped by the time left."""

    def __init__(self, budget: _TimeBudget) -> None:
        super().__init__()
        self.budget = budget

    def render(self, task: Task) -> Text:
        left = self.budget.left(task.time_remaining)
        return Text(f"eta {remote.duration(left)}", style="progress.remaining")


# --- commands ------------------------------------------------------------------------


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="Study spec (YAML or JSON).")],
    storage: StorageOpt = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", min=1, help="Trials in the study (default: budget).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Stop after this many seconds.")
    ] = None,
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
) -> None:
    """Run a study in this process, with a live progress bar; resumes a study of the same name."""
    with user_errors():
        spec = load_spec(spec_file)
        _quiet_optuna()
        from tuner import engine
        from tuner.errors import UsageError
        from tuner.objective import load_data
        from tuner.storage import make_storage

        url = _storage(storage)
        root = data_root or get_settings().data_root
        # Everything that can be wrong is checked before the bar appears.
        load_data(spec, root, engine.pick_device(device))
        study = engine.create_study(spec, make_storage(url))
        existing = engine.counted_trials(study)
        total = n_trials or spec.budget.n_trials
        budget = _TimeBudget(timeout or spec.budget.timeout_s)
        columns = (
            TextColumn("[bold]{task.description}"),
            _BudgetBar(budget),
            MofNCompleteColumn(),
            TextColumn("best [cyan]{task.fields[best]}[/cyan]"),
            TextColumn("pruned {task.fields[pruned]}  failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            _BudgetEta(budget),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(
                spec.name, total=total, completed=existing, **_progress_fields(study)
            )
            started = time.monotonic()
            study = engine.run_study(
                spec, storage_url=url, n_trials=n_trials, timeout=timeout,
                callbacks=[_ProgressCallback(progress, task)], data_root=root, device=device,
            )
        console.print(
            f"[bold]{study.study_name}[/bold]: {_state_counts(study)} "
            f"in {time.monotonic() - started:.1f} s (storage {url})"
        )
        if not study.best_trials:
            err_console.print(_failure_reasons(study) or "", highlight=False, markup=False)
            raise UsageError("no trial completed; the reasons are above")
        console.print(_trials_table(study, limit=5))
        console.print(f"next: tuner export {study.study_name} -o best.yaml --storage {url}")


@app.command()
def show(
    study_name: Annotated[
        str | None, typer.Argument(metavar="STUDY", help="Study name; omit to list studies.")
    ] = None,
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Trials to list.")] = 10,
) -> None:
    """Summarise a study and its best trials, or list the studies in the storage."""
    with user_errors():
        _quiet_optuna()
        import optuna

        from tuner.storage import make_storage

        url = _storage(storage, existing=True)
        if study_name is None:
            _list_studies(optuna.get_all_study_summaries(make_storage(url)), url)
            return
        from tuner import engine

        study = engine.load_study(url, study_name)
        spec = study.user_attrs.get("spec", {})
        console.print(
            f"[bold]{study.study_name}[/bold]  objective {spec.get('objective', '?')}  "
            f"dataset {spec.get('dataset', {}).get('name', '?')}  "
            f"sampler {spec.get('sampler', {}).get('name', '?')}"
        )
        console.print(f"trials: {_state_counts(study)}")
        if reasons := _failure_reasons(study):
            console.print(reasons, highlight=False, markup=False)
        console.print(_trials_table(study, limit=top))


def _list_studies(summaries: list[optuna.study.StudySummary], url: str) -> None:
    from tuner.storage import shown

    table = Table(title=f"studies in {shown(url)}", title_justify="left")
    for column in ("study", "trials", "best", "started"):
        table.add_column(column)
    for s in summaries:
        best = "-"
        if s.best_trial is not None:
            best = ", ".join(_fmt(v) for v in s.best_trial.values)
        started = s.datetime_start.isoformat(" ", "seconds") if s.datetime_start else "-"
        table.add_row(s.study_name, str(s.n_trials), best, started)
    console.print(table)


@app.command()
def export(
    study_name: Annotated[
        str, typer.Argument(metavar="STUDY", help="Study name, or a server job's id (j_...).")
    ],
    storage: StorageOpt = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="yaml or json (default: from -o, else yaml).")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write.")] = None,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Trial number (default: the best).")
    ] = None,
    server: remote.ServerOpt = None,
    key: remote.KeyOpt = None,
) -> None:
    """Write the best trial as a complete spec with every searched value fixed.

    STUDY is a study name in the local storage, or a job id (``j_...``) on the server
    (``--server`` or TUNER_SERVER).
    """
    if remote.is_job_id(study_name):
        remote.export_from_server(study_name, output, fmt, trial, server, key)
        return
    with user_errors():
        _quiet_optuna()
        from tuner.export import export_best
        from tuner.spec import dump_spec

        chosen = fmt or ("json" if output and output.suffix == ".json" else "yaml")
        if chosen not in ("yaml", "json"):
            raise SpecError(f"unknown format {chosen!r}; use yaml or json")
        url = _storage(storage, existing=True)
        text = dump_spec(export_best(url, study_name, trial_number=trial), chosen)  # type: ignore[arg-type]
        if output is None:
            typer.echo(text, nl=False)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {output}; retrain it with: tuner train {output}")


@app.command()
def train(
    spec_file: Annotated[Path, typer.Argument(help="An exported spec (every value fixed).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the weights (.safetensors).")
    ] = None,
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
) -> None:
    """Retrain one fixed configuration and print its metrics beside the trial's."""
    with user_errors():
        spec = load_spec(spec_file)
        from tuner.errors import UsageError
        from tuner.export import config_changed, data_changed, fixed_hp, retrain
        from tuner.weights import save_model

        hp = fixed_hp(spec)  # checks every value is fixed before any training
        if output is not None:
            _check_writable(output)
            if output.suffix.lower() != ".safetensors":
                stem = output.name.split(".")[0] or "model"
                raise UsageError(
                    f"{output}: the weights are written as safetensors; name the file "
                    f"{stem}.safetensors"
                )
        root = data_root or get_settings().data_root
        edited = config_changed(spec, hp)
        for warning in (edited, data_changed(spec, root)):
            if warning:
                err_console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
        result = retrain(spec, data_root=root, device=device)
        reached = spec.provenance.metrics if spec.provenance else {}
        table = Table(title=f"{spec.name}: retrained", title_justify="left")
        table.add_column("metric")
        table.add_column("retrained", justify="right")
        if reached:
            table.add_column(f"trial {spec.provenance.trial_number}", justify="right")  # type: ignore[union-attr]
        for name, value in result.metrics.items():
            row = [name, _fmt(value)]
            if reached:
                row.append(_fmt(reached.get(name, "-")))
            table.add_row(*row)
        console.print(table)
        if reached and not edited:
            console.print(_reproduction(result.metrics, reached, spec.provenance.trial_number))  # type: ignore[union-attr]
        if output is not None:
            save_model(result, output, hp)
            console.print(f"wrote {output}")


def _reproduction(retrained: dict[str, float], reached: dict[str, float], number: int) -> str:
    """Whether the retrain matched its trial to the last bit (the table rounds); the
    clock's metric aside."""
    gaps = [
        abs(retrained[name] - value) / max(abs(value), 1e-12)
        for name, value in reached.items()
        if name in retrained and name != "train_seconds"
    ]
    if all(gap == 0 for gap in gaps):
        return f"[green]reproduced trial {number} exactly[/green]"
    return (
        f"[yellow]differs from trial {number} by up to {max(gaps):.1e} (relative)[/yellow]: "
        "another device, torch build or data gives other rounding"
    )


# --- the service -------------------------------------------------------------------


def _settings(**flags: Any) -> Settings:
    """TUNER_* settings with the flags the user gave laid over them."""
    given = {name: value for name, value in flags.items() if value is not None}
    return Settings(**{**get_settings().model_dump(), **given})


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (TUNER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (TUNER_PORT).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Embedded worker processes; 0 runs the API alone (TUNER_WORKERS)."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", "--storage", help="Database URL (TUNER_DATABASE_URL)."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback bind without API keys.")
    ] = False,
) -> None:
    """Start the job API, its workers and optuna-dashboard on one port."""
    from api.server import UnsafeBind
    from api.server import serve as serve_api
    from tuner.storage import shown

    settings = _settings(
        host=host, port=port, workers=workers, database_url=database_url,
        insecure=insecure or None,
    )
    console.print(
        f"tuner: API http://{settings.host}:{settings.port}/v1/  docs /docs  dashboard /  "
        f"workers {settings.workers}  database {shown(settings.database_url)}"
    )
    try:
        with user_errors():
            serve_api(settings)
    except UnsafeBind as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR) from None


@app.command()
def worker(
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", "--storage", help="Database URL (TUNER_DATABASE_URL)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    max_trials: Annotated[
        int | None, typer.Option("--max-trials", help="Exit after this many trials.")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Run no trials: exit 0 if a worker on this host beat within the grace "
            "period, else 1 (a container's healthcheck).",
        ),
    ] = False,
) -> None:
    """Run one standalone worker against the shared database (for more machines)."""
    settings = _settings(database_url=database_url, device=device)
    if check:
        _check_worker(settings)
        return
    from tuner.jobs.db import migrate
    from tuner.logs import configure_logging
    from tuner.worker import run_worker

    with user_errors():  # a bad database is one red line, before logging is set up
        migrate(settings.database_url)
    configure_logging(settings)
    raise typer.Exit(run_worker(settings, max_trials=max_trials))


def _check_worker(settings: Settings) -> None:
    """``tuner worker --check``: exit 0 when a worker on this host is heard from, else
    print why and exit 1 (a healthcheck's one failing code, whatever the cause)."""
    import socket

    from sqlalchemy.exc import SQLAlchemyError

    from tuner.errors import UsageError
    from tuner.jobs.db import make_engine
    from tuner.jobs.health import worker_health
    from tuner.storage import cause_of, shown

    host = socket.gethostname()
    try:
        engine = make_engine(settings.database_url)
    except UsageError as exc:
        problem: str | None = str(exc)
    else:
        try:
            problem = worker_health(engine, host, settings)
        except SQLAlchemyError as exc:
            problem = f"cannot read {shown(settings.database_url)}: {cause_of(exc)}"
        finally:
            engine.dispose()
    if problem is not None:
        err_console.print(f"[red]unhealthy:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"healthy: a worker on {host} was heard from")


remote.register(app)
app.add_typer(keys_app, name="keys")
