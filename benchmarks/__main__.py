"""``python -m benchmarks [--smoke] [--only NAME ...]``: run, print and save the results.

Writes ``benchmarks/results/<utc time>-full.json`` and ``benchmarks/results/latest.md``;
``--smoke`` writes under ``benchmarks/results/smoke/`` (``latest-smoke.md``), so a CI
run never replaces the real table.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import optuna

from benchmarks import api_load, service_overhead, time_to_target, train_loop, worker_scaling
from benchmarks.common import FULL, SMOKE, Report, Size
from benchmarks.report import save
from benchmarks.service import Server, servers, warm

LOCAL: dict[str, Callable[[Size], list[Report]]] = {
    "train_loop": lambda size: [train_loop.run(size)],
    "time_to_target": time_to_target.run,
}
SERVICE: dict[str, Callable[[Size, dict[int, Server]], list[Report]]] = {
    "service_overhead": service_overhead.run,
    "worker_scaling": worker_scaling.run,
    "api_load": api_load.run,
}
NAMES = [*LOCAL, *SERVICE]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="toy size: proves the harness")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    results = Path(__file__).parent / "results"
    out = args.out or (results / "smoke" if args.smoke else results)
    # SIGTERM (a CI timeout, Ctrl-C from a supervisor) unwinds normally, so the servers
    # this run started are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    size = SMOKE if args.smoke else FULL
    chosen = args.only or NAMES
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    reports: list[Report] = []
    for name in [n for n in LOCAL if n in chosen]:
        reports += _guarded(name, lambda name=name: LOCAL[name](size))
    service = [n for n in SERVICE if n in chosen]
    if service:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tuner-bench-")))
            _say(f"starting servers on 127.0.0.1 ({tmp})")
            running = stack.enter_context(servers(tmp, (1, 2)))
            warm(running, size.smoke)
            for name in service:
                reports += _guarded(name, lambda name=name: SERVICE[name](size, running))
    json_path, md_path = save(reports, size, out, time.perf_counter() - started)
    _say(md_path.read_text())
    _say(f"results: {json_path} and {md_path}")
    return 1 if any(r.error for r in reports) else 0


def _guarded(name: str, run: Callable[[], list[Report]]) -> list[Report]:
    """Run one benchmark; a failure is recorded in its report instead of ending the run."""
    _say(f"running {name} ...")
    began = time.perf_counter()
    try:
        out = run()
    except Exception as exc:
        traceback.print_exc()
        out = [Report(name, name, error=f"{type(exc).__name__}: {exc}")]
    for report in out:
        report.seconds = round(time.perf_counter() - began, 1)
    _say(f"{name} took {time.perf_counter() - began:.0f} s")
    return out


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
