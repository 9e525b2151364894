"""Results on disk: one JSON per run and a markdown table of the latest run."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import Figure, Report, Size, machine


def save(reports: list[Report], size: Size, out: Path, seconds: float) -> tuple[Path, Path]:
    """Write ``<time>-<size>.json`` and ``latest.md`` (``latest-smoke.md``); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    info = machine()
    doc = {
        "size": size.label,
        "seeds": size.seeds,
        "created": stamp,
        "seconds": round(seconds, 1),
        "machine": info,
        "benchmarks": [r.to_json() for r in reports],
    }
    json_path = out / f"{stamp}-{size.label}.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    md_path = out / ("latest-smoke.md" if size.smoke else "latest.md")
    md_path.write_text(markdown(reports, size, info, json_path.name, seconds), encoding="utf-8")
    return json_path, md_path


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3g}"


def _row(f: Figure) -> str:
    s = f.ratio
    met = {True: "yes", False: "**no**", None: ""}[f.met]
    return (f"| {f.name} | {_num(s.median)} | {_num(s.min)} – {_num(s.max)} | {s.n} | "
            f"{f.goal or ''} | {met} | {f.note} |")


def markdown(
    reports: list[Report], size: Size, info: dict[str, object], source: str, seconds: float
) -> str:
    """The table README shows: every ratio with its spread and goal, then the notes."""
    lines = [
        f"# Benchmark results ({size.label})",
        "",
        f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"torch {info['torch']}, optuna {info['optuna']}, sqlalchemy {info['sqlalchemy']}, "
        f"optuna-dashboard {info['optuna-dashboard']}, hyperopt {info['hyperopt']}; "
        f"load average at start {info['loadavg_at_start']}.",
        "",
        f"Each figure is the median over its paired seeds (at least {size.seeds}; the seeds "
        "column) of a ratio of two arms "
        "run side by side in this run (arms interleaved, order reversed every other seed), "
        f"with min – max. Whole run: {seconds / 60:.1f} min. Raw data: `{source}`.",
        "",
        "| ratio | median | min – max | seeds | goal | met | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(f"| **{r.title}** ({r.seconds:g} s) | | | | | | |")
        if r.skipped:
            lines.append(f"| skipped | | | | | | {r.skipped} |")
        if r.error:
            lines.append(f"| failed | | | | | | {r.error} |")
        lines += [_row(f) for f in r.figures]
    notes = [f"- {r.name}: {n}" for r in reports for n in r.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"
