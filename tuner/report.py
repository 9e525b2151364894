"""Study reports: a self-contained HTML page and a PNG, and the diagnosis behind them.

The page is what a person reads after a job: Optuna's plotly plots, the best trials
with their metrics, and a diagnosis in plain words of what the best trials' training
curves say and which hyperparameters to change next. It embeds plotly.js once and
fetches nothing, so it can be mailed, archived or opened offline.

>>> import optuna
>>> study = optuna.create_study(study_name="demo")
>>> page = build_report(study)
>>> "No completed trials yet" in page
True
>>> diagnose({"train_loss": [1.0, 0.999, 0.998, 0.998]}, {"lr": 1e-6})[0].kind
'lr_too_low'
"""

from __future__ import annotations

import html
import io
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from tuner.engine import ranked_trials

# --- diagnosis thresholds ------------------------------------------------------------

MIN_EPOCHS = 3
"""A curve shorter than this says nothing about its shape."""
NOISE = 0.02
"""Changes smaller than this fraction of the first epoch's loss are noise."""
OVERFIT_RISE = 0.10
"""Validation loss ending this fraction above its minimum, while training loss falls."""
OVERFIT_GAP_RATIO = 2.0
"""Final validation loss this many times the training loss is a large gap..."""
OVERFIT_GAP_FLOOR = 0.10
"""...when the gap is also at least this fraction of the first validation loss."""
UNDERFIT_RATIO = 0.5
"""Losses still above this fraction of their first-epoch value after training are high."""
FLAT_LR = 0.05
"""Training loss falling less than this fraction over all epochs barely moved."""
EXPLODE_FACTOR = 2.0
"""Training loss ending this many times above its minimum has blown up."""
PLATEAU_EPOCHS = 3
"""Epochs looked back over to tell 'still falling' from 'levelled off'."""
STILL_IMPROVING = 0.25
"""Share of the validation loss's whole drop made in the last PLATEAU_EPOCHS before its best
above which the curve was still descending when early stopping struck."""
MINOR_IMPORTANCE = 0.05
"""Parameters below this share of the importance barely mattered."""
DIAGNOSED_TRIALS = 3
"""How many of the best trials the diagnosis looks at."""
SLICE_PARAMS = 4
"""Slice plots are drawn for this many of the most important parameters."""

Kind = Literal[
    "overfitting", "underfitting", "diverged", "lr_too_low", "stopped_early", "importance"
]


@dataclass(frozen=True)
class Finding:
    """One thing the curves say (``message``) and what to change about it (``advice``)."""

    kind: Kind
    message: str
    advice: str


# --- diagnosis: pure functions over curves and resolved hyperparameters ----------------


def diagnose(
    curves: Mapping[str, Sequence[float]],
    hp: Mapping[str, Any],
    *,
    epochs_run: int | None = None,
    fail_reason: str | None = None,
) -> list[Finding]:
    """What a trial's training and validation loss curves say, with advice from its ``hp``.

    ``curves`` holds ``train_loss`` and ``val_loss`` per epoch; ``hp`` the resolved
    hyperparameters (``lr``, ``epochs``, ``patience``, ``weight_decay``, ...). A diverged
    run gets that finding alone: the rest of its curve means nothing.
    """
    train = _floats(curves.get("train_loss"))
    val = _floats(curves.get("val_loss"))
    diverged = _diverged(train, val, fail_reason, hp)
    if diverged:
        return [diverged]
    findings: list[Finding] = []
    overfit = _overfitting(train, val, hp)
    if overfit:
        findings.append(overfit)
    elif len(train) >= MIN_EPOCHS:
        slow = _lr_too_low(train, hp) or _underfitting(train, val, hp)
        if slow:
            findings.append(slow)
    stopped = _stopped_early(val, hp, epochs_run if epochs_run is not None else len(train))
    if stopped:
        findings.append(stopped)
    return findings


def diagnose_trial(trial: FrozenTrial) -> list[Finding]:
    """:func:`diagnose` on what the objective stored in a trial's user attributes."""
    attrs = trial.user_attrs
    curves = attrs.get("curves")
    findings = diagnose(
        curves if isinstance(curves, dict) else {},
        hyperparameters(trial),
        epochs_run=attrs.get("epochs_run") if isinstance(attrs.get("epochs_run"), int) else None,
        fail_reason=attrs.get("fail_reason"),
    )
    if trial.state == TrialState.PRUNED:  # the pruner cut it short, not early stopping
        return [f for f in findings if f.kind != "stopped_early"]
    return findings


def explain_importances(importances: Mapping[str, float]) -> Finding | None:
    """Which hyperparameters mattered most, and where to spend the next study's trials."""
    ranked = sorted(importances.items(), key=lambda kv: -kv[1])
    if not ranked:
        return None
    top = [f"{name} ({share:.0%})" for name, share in ranked[:3]]
    message = f"{top[0]} mattered most" + (f", then {_join(top[1:])}." if top[1:] else ".")
    major = [name for name, share in ranked if share >= MINOR_IMPORTANCE]
    minor = [name for name, share in ranked if share < MINOR_IMPORTANCE]
    advice = f"Narrow the range of {_join(major[:3])} around the best trials' values"
    advice += (
        f"; {_join(minor)} barely mattered (under {MINOR_IMPORTANCE:.0%} each): fix "
        f"{'it' if len(minor) == 1 else 'them'} to the best trial's value to save trials."
        if minor
        else "."
    )
    return Finding("importance", message, advice)


def summarize_divergence(trials: Sequence[FrozenTrial]) -> Finding | None:
    """One finding for all diverged trials: how many, at which lr, and where to cap lr."""
    diverged = [t for t in trials if _diverged_trial(t)]
    if not diverged:
        return None
    lrs = sorted(v for t in diverged if _number(v := hyperparameters(t).get("lr")))
    if not lrs:
        return Finding(
            "diverged", f"{len(diverged)} trial(s) diverged.", diagnose_trial(diverged[0])[0].advice
        )
    return Finding(
        "diverged",
        f"{len(diverged)} trial(s) diverged, at lr {', '.join(f'{v:.3g}' for v in lrs[:8])}.",
        f"Cap the lr range below {lrs[0]:.3g}, the smallest lr that diverged, or set grad_clip "
        "(e.g. 1.0).",
    )


def _diverged_trial(trial: FrozenTrial) -> bool:
    return any(f.kind == "diverged" for f in diagnose_trial(trial))


def hyperparameters(trial: FrozenTrial) -> dict[str, Any]:
    """The resolved hyperparameters the objective stored, else rebuilt from the params.

    Param names follow the spec's convention: ``optimizer`` names the branch and
    ``optimizer.sgd.momentum`` is a parameter of that branch.
    """
    stored = trial.user_attrs.get("hp")
    if isinstance(stored, dict):
        return stored
    hp: dict[str, Any] = {}
    for name, value in trial.params.items():
        dim, _, rest = name.partition(".")
        if rest:
            hp.setdefault(dim, {})[rest.partition(".")[2]] = value
        elif isinstance(hp.get(dim), dict):
            hp[dim]["name"] = value
        else:
            hp[dim] = {"name": value} if name in ("optimizer", "loss", "schedule") else value
    return hp


def _diverged(
    train: list[float], val: list[float], fail_reason: str | None, hp: Mapping[str, Any]
) -> Finding | None:
    reason = fail_reason or ""
    non_finite = not all(math.isfinite(v) for v in train + val)
    if "diverg" in reason.lower() or non_finite:
        message = f"Training diverged: {reason}" if reason else "The loss became NaN or infinite."
    elif len(train) >= MIN_EPOCHS and train[-1] > EXPLODE_FACTOR * min(train):
        message = (
            f"Training loss blew up: it fell to {min(train):.3g}, then rose to {train[-1]:.3g} "
            f"by epoch {len(train)}."
        )
    else:
        return None
    clip = hp.get("grad_clip")
    advice = (
        f"Lower lr{_now(hp, 'lr')}, about tenfold, or cap its range below this value; "
        f"set grad_clip{_now(hp, 'grad_clip') if clip else ' (now off)'}, e.g. 1.0, "
        "to keep single steps from exploding."
    )
    return Finding("diverged", message, advice)


def _overfitting(train: list[float], val: list[float], hp: Mapping[str, Any]) -> Finding | None:
    if len(val) < MIN_EPOCHS or len(train) != len(val):
        return None
    best = min(range(len(val)), key=val.__getitem__)
    rise = val[-1] - val[best]
    rising = (
        best < len(val) - 1
        and rise > OVERFIT_RISE * val[best]
        and rise > NOISE * val[0]
        and train[-1] < train[best] - NOISE * train[0]
    )
    gap = (
        val[-1] > OVERFIT_GAP_RATIO * train[-1] and val[-1] - train[-1] > OVERFIT_GAP_FLOOR * val[0]
    )
    if not (rising or gap):
        return None
    said = []
    if rising:
        said.append(
            f"Validation loss was lowest at epoch {best + 1} ({val[best]:.3g}) and rose to "
            f"{val[-1]:.3g} by epoch {len(val)}, while training loss kept falling "
            f"({train[best]:.3g} -> {train[-1]:.3g})."
        )
    if gap:
        said.append(
            f"Final validation loss {val[-1]:.3g} is {val[-1] / max(train[-1], 1e-12):.1f}x "
            f"the training loss {train[-1]:.3g}."
        )
    advice = (
        f"Regularize more: raise weight_decay{_now(hp, 'weight_decay')}, "
        f"dropout{_now(hp, 'dropout')} or l1{_now(hp, 'l1')}"
    )
    if rising:
        advice += (
            f"; stop sooner: lower epochs{_now(hp, 'epochs')} to about {best + 1}, or use "
            f"early stopping with a small patience{_now(hp, 'patience')}"
        )
    return Finding("overfitting", " ".join(said), advice + ".")


def _lr_too_low(train: list[float], hp: Mapping[str, Any]) -> Finding | None:
    if train[0] - train[-1] >= FLAT_LR * abs(train[0]):
        return None
    return Finding(
        "lr_too_low",
        f"Training loss barely moved: {train[0]:.3g} at epoch 1, {train[-1]:.3g} at epoch "
        f"{len(train)}; the learning rate is too small for the weights to change.",
        f"Raise lr{_now(hp, 'lr')} about tenfold, or move its search range up.",
    )


def _underfitting(train: list[float], val: list[float], hp: Mapping[str, Any]) -> Finding | None:
    high = train[-1] >= UNDERFIT_RATIO * train[0] and (
        not val or val[-1] >= UNDERFIT_RATIO * val[0]
    )
    if not high:
        return None
    back = min(PLATEAU_EPOCHS, len(train) - 1)
    falling = train[-1 - back] - train[-1] > NOISE * train[0]
    trend = "was still falling at the end" if falling else "had levelled off"
    val_text = f" (validation {val[0]:.3g} -> {val[-1]:.3g})" if val else ""
    message = (
        f"Both losses stayed high: training loss only fell from {train[0]:.3g} to "
        f"{train[-1]:.3g}{val_text} and {trend}."
    )
    longer = f"train longer (raise epochs{_now(hp, 'epochs')})"
    bigger = f"use a larger model (raise depth{_now(hp, 'depth')} or width{_now(hp, 'width')})"
    faster = f"a higher lr{_now(hp, 'lr')}"
    steps = [longer, faster, bigger] if falling else [bigger, faster, longer]
    advice = _join(steps, "or").capitalize() + "."
    strong = [k for k in ("weight_decay", "dropout", "l1") if _number(hp.get(k))]
    if strong:
        advice += f" Ease regularization: lower {_join([k + _now(hp, k) for k in strong])}."
    return Finding("underfitting", message, advice)


def _stopped_early(val: list[float], hp: Mapping[str, Any], epochs_run: int) -> Finding | None:
    planned = hp.get("epochs")
    if not isinstance(planned, int) or epochs_run >= planned:
        return None
    patience = hp.get("patience")
    message = f"Early stopping ended training at epoch {epochs_run} of {planned}"
    message += f" (patience {patience})." if patience is not None else "."
    if len(val) < MIN_EPOCHS:
        return Finding("stopped_early", message, "Raise patience or lower epochs to match.")
    best = min(range(len(val)), key=val.__getitem__)
    message += f" Validation loss was best at epoch {best + 1}."
    recent = val[max(0, best - PLATEAU_EPOCHS)] - val[best]
    if recent > STILL_IMPROVING * (val[0] - val[best]):
        advice = (
            f"Validation loss was still falling steeply before its best epoch: raise "
            f"patience{_now(hp, 'patience')} so a noisy epoch does not end training early."
        )
    else:
        advice = (
            f"Validation loss had levelled off, so the stop only saved time; epochs"
            f"{_now(hp, 'epochs')} can be capped near {best + 1 + (patience or 0)}."
        )
    return Finding("stopped_early", message, advice)


def _now(hp: Mapping[str, Any], key: str) -> str:
    value = hp.get(key)
    if isinstance(value, bool) or value is None:
        return ""
    return f" (now {value:.3g})" if isinstance(value, float) else f" (now {value})"


def _floats(values: Any) -> list[float]:
    """A stored curve as floats; anything that is not a number counts as NaN."""
    if not isinstance(values, list | tuple):
        return []
    return [float(v) if isinstance(v, int | float) else math.nan for v in values]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _join(items: Sequence[str], word: str = "and") -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


# --- reading a study ------------------------------------------------------------------


def metric_names(study: optuna.Study) -> list[str]:
    """Names of the study's objectives: set metric names, the tuner attr, or the spec."""
    n = len(study.directions)
    candidates: list[Any] = [study.metric_names, study.user_attrs.get("metrics")]
    spec = _spec(study)
    if spec:
        candidates.append(spec.get("metrics"))
    for names in candidates:
        if isinstance(names, list) and len(names) == n:
            return [str(m["name"]) if isinstance(m, dict) else str(m) for m in names]
    return ["value"] if n == 1 else [f"value {i}" for i in range(n)]


def _spec(study: optuna.Study) -> dict[str, Any] | None:
    spec = study.user_attrs.get("spec")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return None
    return spec if isinstance(spec, dict) else None


def _snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy: every section reads the same trials, with one storage read.

    A running job keeps adding trials; plots made one by one from the live storage
    could disagree with each other and would each query the database again.
    """
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    copy.add_trials(study.get_trials(deepcopy=False))
    copy.set_metric_names(metric_names(study))
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    return copy


def _importances(study: optuna.Study, completed: list[FrozenTrial]) -> dict[str, float] | str:
    """Importances, or why there are none (a sentence for the page)."""
    if len(completed) < 2:
        return "Parameter importances need at least two completed trials."
    varying = {
        name
        for name in {n for t in completed for n in t.params}
        if len({json.dumps(t.params.get(name), default=str) for t in completed}) > 1
    }
    if not varying:
        return "Parameter importances need parameters that vary between completed trials."
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        return f"Parameter importances could not be computed: {exc}"


# --- the page ----------------------------------------------------------------------------


def build_report(study: optuna.Study, *, top_k: int = 10) -> str:
    """One self-contained HTML page about ``study`` (plotly.js inline, no network).

    Works on a study at any stage: with no completed trial the page says so; plots
    that need more trials say what they need instead.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    with warnings.catch_warnings():
        # Optuna warns about few trials and experimental features; the page says it in words.
        warnings.simplefilter("ignore")
        return _Page(_snapshot(study), top_k).render()


class _Page:
    def __init__(self, study: optuna.Study, top_k: int) -> None:
        self.study = study
        self.top_k = top_k
        self.names = metric_names(study)
        self.multi = len(self.names) > 1
        self.trials = study.get_trials(deepcopy=False)
        self.ranked = ranked_trials(study)
        self.importances = _importances(study, self.ranked)
        self.n_plots = 0

    def render(self) -> str:
        name = _esc(self.study.study_name)
        sections = [self._summary(), self._diagnosis(), self._top_table()]
        if self.ranked:
            sections += self._plots()
        else:
            sections.append(
                '<section id="plots"><h2>Plots</h2><p class="na">No completed trials yet: '
                "plots appear once trials finish.</p></section>"
            )
        plotly_js = f"<script>{get_plotlyjs()}</script>" if self.n_plots else ""
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Report: {name}</title><style>{_CSS}</style>{plotly_js}</head><body>"
            f"<h1>Tuning report: {name}</h1>"
            f'<p class="meta">Generated {stamp} with Optuna {optuna.__version__}.</p>'
            + "".join(sections)
            + "</body></html>\n"
        )

    # sections

    def _summary(self) -> str:
        counts = Counter(t.state.name.lower() for t in self.trials)
        rows = [("Trials", ", ".join(f"{n} {s}" for s, n in counts.most_common()) or "none")]
        spec = _spec(self.study) or {}
        if spec:
            dataset = spec.get("dataset", {}).get("name", "?")
            budget = spec.get("budget", {}).get("n_trials")
            rows.append(("Objective", f"{spec.get('objective', '?')} on {dataset}"))
            if budget:
                rows.append(("Budget", f"{budget} trials"))
        directions = [d.name.lower() for d in self.study.directions]
        rows.append(
            (
                "Metrics",
                ", ".join(f"{n} ({d})" for n, d in zip(self.names, directions, strict=True)),
            )
        )
        if not self.ranked:
            body = _kv_table(rows) + (
                '<p class="na">No completed trials yet: the report fills in as trials finish.</p>'
            )
        elif self.multi:
            front = self.study.best_trials
            rows.append(
                (
                    "Pareto front",
                    f"{len(front)} trial(s): "
                    + ", ".join(f"#{t.number}" for t in sorted(front, key=lambda t: t.number)[:20]),
                )
            )
            for i, name in enumerate(self.names):
                best = self._best_by(i)
                rows.append((f"Best {name}", f"{_fmt(best.values[i])} (trial #{best.number})"))
            body = _kv_table(rows)
        else:
            best = self.ranked[0]
            rows.append((f"Best {self.names[0]}", f"{_fmt(best.value)} (trial #{best.number})"))
            rows.append(
                ("Best params", ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
            )
            body = _kv_table(rows)
        if spec:
            body += (
                "<details><summary>Study spec</summary><pre>"
                f"{_esc(json.dumps(spec, indent=2, default=str))}</pre></details>"
            )
        return f'<section id="summary"><h2>Summary</h2>{body}</section>'

    def _diagnosis(self) -> str:
        parts: list[str] = []
        for trial in self.ranked[:DIAGNOSED_TRIALS]:
            values = ", ".join(
                f"{n} {_fmt(v)}" for n, v in zip(self.names, trial.values, strict=True)
            )
            findings = diagnose_trial(trial)
            items = (
                _findings_list(findings)
                if findings
                else '<p class="ok">Its curves show no overfitting, underfitting or lr problem.</p>'
                if trial.user_attrs.get("curves")
                else '<p class="na">No training curves were stored for this trial.</p>'
            )
            parts.append(f"<h3>Trial #{trial.number} ({_esc(values)})</h3>{items}")
        parts.append(self._failures())
        if isinstance(self.importances, dict):
            found = explain_importances(self.importances)
            if found:
                parts.append(f"<h3>What mattered most</h3>{_findings_list([found])}")
        else:
            parts.append(f'<h3>What mattered most</h3><p class="na">{_esc(self.importances)}</p>')
        if not self.ranked:
            parts.insert(0, '<p class="na">No completed trials to diagnose yet.</p>')
        return f'<section id="diagnosis"><h2>Diagnosis</h2>{"".join(parts)}</section>'

    def _failures(self) -> str:
        failed = [t for t in self.trials if t.state == TrialState.FAIL]
        if not failed:
            return ""
        diverged = summarize_divergence(failed)
        parts = [_findings_list([diverged])] if diverged else []
        reasons = Counter(
            str(t.user_attrs.get("fail_reason") or "no reason recorded")
            for t in failed
            if not _diverged_trial(t)
        )
        parts += [f"<p>{n} trial(s) failed: {_esc(r)}</p>" for r, n in reasons.most_common()]
        return f"<h3>Failed trials</h3>{''.join(parts)}"

    def _top_table(self) -> str:
        top = self.ranked[: self.top_k]
        if not top:
            return (
                '<section id="top-trials"><h2>Top trials</h2><p class="na">None yet.</p></section>'
            )
        params = list(dict.fromkeys(p for t in top for p in t.params))
        metrics = list(
            dict.fromkeys(
                m for t in top for m in (t.user_attrs.get("metrics") or {}) if m not in self.names
            )
        )
        head = ["Trial", *self.names, *params, *metrics]
        rows = []
        for t in top:
            extra = t.user_attrs.get("metrics") or {}
            cells = [f"#{t.number}", *map(_fmt, t.values)]
            cells += [_fmt(t.params[p]) if p in t.params else "–" for p in params]
            cells += [_fmt(extra[m]) if m in extra else "–" for m in metrics]
            rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
        table = (
            '<div class="scroll"><table class="trials"><thead><tr>'
            + "".join(f"<th>{_esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table></div>"
        )
        title = f"Top {len(top)} of {len(self.ranked)} completed trials"
        return f'<section id="top-trials"><h2>{title}</h2>{table}</section>'

    def _plots(self) -> list[str]:
        study = self.study
        enough = len(self.ranked) >= 2
        need_two = "needs at least two completed trials"
        # Per-objective plots: every objective's history; the first one elsewhere.
        first = {"target": _nth(0) if self.multi else None, "target_name": self.names[0]}
        history = (
            [
                vis.plot_optimization_history(
                    study, target=_nth(i), target_name=name
                ).update_layout(title=f"Optimization history: {name}")
                for i, name in enumerate(self.names)
            ]
            if self.multi
            else [vis.plot_optimization_history(study, target_name=self.names[0])]
        )
        sections = [self._section("history", "Optimization history", history)]
        if self.multi:
            pareto = [vis.plot_pareto_front(study)] if enough else need_two
            sections.append(self._section("pareto", "Pareto front", pareto))
        importance = (
            [self._importance_figure(self.importances)]
            if isinstance(self.importances, dict)
            else self.importances
        )
        sections.append(self._section("importances", "Parameter importances", importance))
        of_first = f" ({self.names[0]})" if self.multi else ""
        parallel = [vis.plot_parallel_coordinate(study, **first)] if enough else need_two
        sections.append(self._section("parallel", f"Parallel coordinates{of_first}", parallel))
        top_params = self._top_params()
        slices = [vis.plot_slice(study, params=top_params, **first)] if enough else need_two
        if not top_params:
            slices = "No parameters to plot."
        title = f"Slice plots of the top {len(top_params)} parameters{of_first}"
        sections.append(self._section("slices", title, slices))
        if not self.multi:
            has_steps = any(t.intermediate_values for t in self.trials)
            sections.append(
                self._section(
                    "intermediate",
                    "Intermediate values (learning curves, pruned trials included)",
                    [vis.plot_intermediate_values(study)]
                    if has_steps
                    else "No trial reported intermediate values.",
                )
            )
        return sections

    def _importance_figure(self, importances: dict[str, float]) -> go.Figure:
        """Optuna's plot for one objective; for several, the joint importances computed
        over the Pareto front (its per-objective plot treats every objective as minimized).
        """
        if not self.multi:
            return vis.plot_param_importances(self.study, target_name=self.names[0])
        names = list(importances)[::-1]
        return go.Figure(
            go.Bar(
                x=[importances[n] for n in names],
                y=names,
                orientation="h",
                text=[f"{importances[n]:.2f}" for n in names],
                textposition="outside",
            ),
            layout={
                "title": "Hyperparameter importances for all objectives together",
                "xaxis": {"title": "Importance"},
            },
        )

    def _section(self, key: str, title: str, figs: list[go.Figure] | str) -> str:
        if isinstance(figs, str):
            body = f'<p class="na">{_esc(figs)}</p>'
            return f'<section id="{key}"><h2>{_esc(title)}</h2>{body}</section>'
        divs = []
        for i, fig in enumerate(figs):
            self.n_plots += 1
            fig.update_layout(margin={"t": 50, "b": 50})
            divs.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"plot-{key}-{i}",
                    default_height="460px",
                    config={"displaylogo": False, "responsive": True},
                )
            )
        return f'<section id="{key}"><h2>{_esc(title)}</h2>{"".join(divs)}</section>'

    def _top_params(self) -> list[str]:
        if isinstance(self.importances, dict):
            return list(self.importances)[:SLICE_PARAMS]
        return list(dict.fromkeys(p for t in self.ranked for p in t.params))[:SLICE_PARAMS]

    def _best_by(self, i: int) -> FrozenTrial:
        sign = 1 if self.study.directions[i] == StudyDirection.MINIMIZE else -1
        return min(self.ranked, key=lambda t: sign * t.values[i])


def _nth(i: int) -> Callable[[FrozenTrial], float]:
    return lambda t: t.values[i]


def _findings_list(findings: Sequence[Finding]) -> str:
    return (
        '<ul class="findings">'
        + "".join(
            f'<li class="finding {f.kind}"><b>{_esc(f.kind.replace("_", " "))}</b>: '
            f'{_esc(f.message)} <span class="advice">{_esc(f.advice)}</span></li>'
            for f in findings
        )
        + "</ul>"
    )


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    return (
        '<table class="kv">'
        + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1rem 2rem;color:#1f2328}
h1{font-size:1.6rem;margin-bottom:0}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;
margin-top:2rem}h3{font-size:1.05rem;margin-bottom:.3rem}
.meta{color:#656d76;margin-top:.2rem}.na{color:#656d76;font-style:italic}.ok{color:#1a7f37}
table{border-collapse:collapse}th,td{padding:.25rem .6rem;border:1px solid #d0d7de;
text-align:left;vertical-align:top}thead th{background:#f6f8fa}.kv th{background:#f6f8fa}
.scroll{overflow-x:auto}.trials td{font-variant-numeric:tabular-nums;white-space:nowrap}
.findings li{margin:.3rem 0}.advice{display:block;color:#0550ae}
.finding.diverged b,.finding.overfitting b{color:#cf222e}
.finding.underfitting b,.finding.lr_too_low b{color:#9a6700}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto}
"""


# --- the PNG ------------------------------------------------------------------------------


def history_png(study: optuna.Study, *, dpi: int = 100) -> bytes:
    """The optimization history as a PNG: each objective's values and best so far.

    Drawn on a bare matplotlib Figure with the Agg canvas, not pyplot: no global
    backend switch and no shared state, so it is safe in server threads.
    """
    names = metric_names(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig = Figure(figsize=(8, 3.2 * len(names)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    fig.suptitle(f"Optimization history: {study.study_name}")
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.set_xlabel("trial")
        ax.set_ylabel(name)
        if not done:
            ax.text(
                0.5,
                0.5,
                "No completed trials yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        xs = [t.number for t in done]
        ys = [t.values[i] for t in done]
        pick = min if study.directions[i] == StudyDirection.MINIMIZE else max
        best = [pick(ys[: j + 1]) for j in range(len(ys))]
        ax.scatter(xs, ys, s=18, label=name)
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
