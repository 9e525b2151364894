"""Commands that talk to a tuner server: submit, jobs, status, watch, cancel, resume, report.

They speak HTTP only (through :mod:`tuner.client`), so they start fast and never import
torch. ``register(app)`` adds them to the ``tuner`` command line; the server and the
API key come from ``--server`` / ``--key`` or ``TUNER_SERVER`` / ``TUNER_API_KEY``.

    tuner submit studies/digits-mlp.yaml --watch
    tuner jobs --state running
    tuner status j_0123456789ab
    tuner report j_0123456789ab -o report.html

A mistake the user can fix (a bad spec, an unknown job, no server) is one red line and
exit code 2; ``watch`` exits 0 when the job succeeded and 1 when it failed or was
cancelled, so scripts and CI can gate on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuner.client import Client, Job, TunerError
from tuner.spec import SpecError

console = Console()
err_console = Console(stderr=True)

USER_ERROR = 2
JOB_DID_NOT_SUCCEED = 1
STATE_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}
_JOB_ID = re.compile(r"^j_[0-9a-f]{6,32}$")
CLI_HINTS = (
    (re.compile(r"GET /v1/jobs\b(?!/)"), "`tuner jobs`"),
    (re.compile(r"send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"),
     "give it with --key or TUNER_API_KEY"),
)
"""The server's hints name its routes and headers; on the command line, these."""

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="TUNER_SERVER", show_default=False,
        help="Server URL (default: TUNER_SERVER, else http://127.0.0.1:8000).",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key", envvar="TUNER_API_KEY", show_default=False,
        help="API key (default: TUNER_API_KEY).",
    ),
]
JobArg = Annotated[str, typer.Argument(metavar="ID", help="Job id (from `tuner jobs`).")]


def is_job_id(text: str) -> bool:
    """Whether ``text`` reads as a server's job id (``j_`` and hex) rather than a study name."""
    return bool(_JOB_ID.match(text))


def cli_message(text: str) -> str:
    """A server's message with its hints for HTTP callers turned into the CLI's."""
    for server_hint, cli_hint in CLI_HINTS:
        text = server_hint.sub(cli_hint, text)
    return text


@contextmanager
def connect(server: str | None, key: str | None) -> Iterator[Client]:
    """A client for the command's body; a refusal or an unreachable server is one red line
    and exit code 2."""
    try:
        with Client(server, api_key=key) as client:
            yield client
    except (TunerError, SpecError) as exc:
        message = cli_message(str(exc))
        err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR) from None


# --- formatting ----------------------------------------------------------------------


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``-`` when not known."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _state(job: Job) -> str:
    return f"[{STATE_STYLE.get(job.state, 'white')}]{job.state}[/]"


def _best(job: Job) -> str:
    """``val_accuracy=0.97 (trial 4)``, the Pareto front's size, or ``-``."""
    best = job.best
    if best is None:
        return "-"
    if best.trial_number is None:
        return f"{best.pareto_front_size} trials on the Pareto front"
    values = best.values or []
    names = job.metrics or (
        ["value"] if len(values) == 1 else [f"value {i}" for i in range(len(values))]
    )
    shown = ", ".join(f"{n}={_num(v)}" for n, v in zip(names, values, strict=False))
    return f"{shown} (trial {best.trial_number})"


def _pruned_failed(job: Job) -> tuple[int, int]:
    return (job.trials.pruned, job.trials.fail) if job.trials else (0, 0)


def _outcome(job: Job) -> str:
    line = f"job {job.id} {_state(job)}: {job.finished} of {job.budget.n_trials} trials"
    if job.best is not None:
        line += f"; best {_best(job)}"
    if job.state != "succeeded" and job.reason:
        line += f" ({job.reason})"
    return line


# --- watching -------------------------------------------------------------------------


def follow(client: Client, job_id: str) -> Job:
    """A live progress bar fed by the job's events, until the job ends; returns the job."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TextColumn("best [cyan]{task.fields[best]}[/cyan]"),
        TextColumn("pruned {task.fields[pruned]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("eta {task.fields[eta]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(
            job_id, total=None, state="", best="-", pruned=0, failed=0, eta="-"
        )

        def show(job: Job) -> None:
            pruned, failed = _pruned_failed(job)
            progress.update(
                task, description=job.name, total=job.budget.n_trials, completed=job.finished,
                state=_state(job), best=_best(job), pruned=pruned, failed=failed,
                eta=duration(job.eta_s),
            )

        try:
            job = client.wait(job_id, progress=show)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(
                f"stopped watching; job {job_id} keeps running "
                f"(stop it with: tuner cancel {job_id})"
            )
            raise typer.Exit(130) from None
    return job


def _watch_to_exit(client: Client, job_id: str) -> None:
    job = follow(client, job_id)
    console.print(_outcome(job), highlight=False)
    if job.state != "succeeded":
        raise typer.Exit(JOB_DID_NOT_SUCCEED)


# --- commands ---------------------------------------------------------------------------


def submit(
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC", help="Study spec (YAML or JSON).")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job until it ends.")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key", show_default=False,
            help="Submitting again with the same key and spec returns the same job.",
        ),
    ] = None,
    server: ServerOpt = None,
    key: KeyOpt = None,
) -> None:
    """Submit a tuning job to the server (the server validates the spec)."""
    with connect(server, key) as client:
        job = client.submit(spec_file, idempotency_key=idempotency_key)
        console.print(
            f"submitted job [bold]{job.id}[/bold] ({job.name}, {job.budget.n_trials} trials): "
            f"{_state(job)}",
            highlight=False,
        )
        if not watch:
            console.print(f"follow it with: tuner watch {job.id}", highlight=False)
            return
        _watch_to_exit(client, job.id)


def jobs(
    state: Annotated[
        str | None,
        typer.Option(
            "--state", show_default=False,
            help="Only jobs in this state: queued, running, succeeded, failed or cancelled.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
    server: ServerOpt = None,
    key: KeyOpt = None,
) -> None:
    """List jobs on the server, newest first."""
    with connect(server, key) as client:
        found = list(client.list(state=state, limit=limit))
    if not found:
        which = f"{state} jobs" if state else "jobs"
        console.print(f"no {which} on this server; submit one with: tuner submit SPEC")
        return
    table = Table(title="jobs, newest first", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=max(len(j.id) for j in found))  # copyable
    for column in ("name", "state", "trials", "objective", "created"):
        table.add_column(column, justify="right" if column == "trials" else "left")
    for job in found:
        created = f"{job.created_at.astimezone():%Y-%m-%d %H:%M}" if job.created_at else "-"
        table.add_row(
            job.id, job.name, _state(job), f"{job.finished}/{job.budget.n_trials}",
            f"{job.objective} on {job.dataset}", created,
        )
    console.print(table)


def status(job_id: JobArg, server: ServerOpt = None, key: KeyOpt = None) -> None:
    """Show one job: state, trials by state, the best so far, time and ETA."""
    with connect(server, key) as client:
        job = client.get(job_id)
        base = client.base_url
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("job", f"{job.id} ({job.name})")
    grid.add_row("state", _state(job) + (f": {job.reason}" if job.reason else ""))
    grid.add_row("objective", f"{job.objective} on {job.dataset}")
    if job.metrics:
        directions = job.directions or [""] * len(job.metrics)
        grid.add_row("metrics", ", ".join(
            f"{m} ({d})" if d else m for m, d in zip(job.metrics, directions, strict=False)
        ))
    counts = ""
    if job.trials:
        t = job.trials
        counts = (
            f" ({t.complete} complete, {t.pruned} pruned, {t.fail} failed, {t.running} running"
            + (f"; {t.stopped} stopped, not counted" if t.stopped else "") + ")"
        )
    grid.add_row("trials", f"{job.finished} of {job.budget.n_trials} finished{counts}")
    grid.add_row("best", _best(job))
    grid.add_row("elapsed", duration(job.elapsed_s))
    if not job.done:
        grid.add_row("eta", duration(job.eta_s))
    if job.links.get("dashboard"):
        grid.add_row("dashboard", f"{base}{job.links['dashboard']}")
    console.print(grid, highlight=False)


def watch(job_id: JobArg, server: ServerOpt = None, key: KeyOpt = None) -> None:
    """Follow a job live until it ends; exit code 0 if it succeeded, 1 if not."""
    with connect(server, key) as client:
        _watch_to_exit(client, job_id)


def cancel(job_id: JobArg, server: ServerOpt = None, key: KeyOpt = None) -> None:
    """Cancel a job; running trials stop after their current epoch."""
    with connect(server, key) as client:
        job = client.cancel(job_id)
    console.print(
        f"job {job.id} {_state(job)} after {job.finished} of {job.budget.n_trials} trials; "
        f"continue it with: tuner resume {job.id}",
        highlight=False,
    )


def resume(job_id: JobArg, server: ServerOpt = None, key: KeyOpt = None) -> None:
    """Queue a cancelled or failed job again, to its remaining budget."""
    with connect(server, key) as client:
        job = client.resume(job_id)
    console.print(
        f"job {job.id} {_state(job)} again: {job.budget.n_trials - job.finished} trials to go",
        highlight=False,
    )


def report(
    job_id: JobArg,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="HTML file to write.")
    ] = Path("report.html"),
    server: ServerOpt = None,
    key: KeyOpt = None,
) -> None:
    """Save a job's HTML report: plots, the top trials and a diagnosis of their curves."""
    with connect(server, key) as client:
        path = client.report(job_id, output)
    console.print(f"wrote {path}; open it in a browser", highlight=False)


def export_from_server(
    job_id: str,
    output: Path | None,
    fmt: str | None,
    trial: int | None,
    server: str | None,
    key: str | None,
) -> None:
    """``tuner export ID``: the best configuration of a server's job (or trial number
    ``trial``), as a runnable spec.

    Writes ``output`` (format from ``fmt``, else its suffix, else YAML) or prints to stdout.
    """
    chosen = fmt or ("json" if output and output.suffix == ".json" else "yaml")
    with connect(server, key) as client:
        text = client.best_config(job_id, format=chosen, path=output, trial=trial)  # type: ignore[arg-type]
    if output is None:
        typer.echo(text, nl=False)
    else:
        err_console.print(f"wrote {output}; retrain it with: tuner train {output}")


COMMANDS = {
    "submit": submit,
    "jobs": jobs,
    "status": status,
    "watch": watch,
    "cancel": cancel,
    "resume": resume,
    "report": report,
}


def register(app: typer.Typer) -> None:
    """Add the server commands to the ``tuner`` command line."""
    for name, command in COMMANDS.items():
        app.command(name)(command)
