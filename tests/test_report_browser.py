"""The report in a real headless browser: plots render, nothing errors, nothing is fetched.

Drives Debian's chromium through Playwright; skipped where either is missing.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from browser import launch, require_chromium
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.report import build_report

pytestmark = [pytest.mark.slow, pytest.mark.browser]

HOSTILE = "<img src=x onerror=alert(1)>"


def make_study(tmp_path: Path, directions: list[str]) -> optuna.Study:
    """A study with varied, pruned and failed trials and a hostile name and param."""
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'browser.db'}",
        study_name=f"browser {HOSTILE}",
        directions=directions,
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    study.set_user_attr("metrics", ["val_accuracy", "n_params"][: len(directions)])
    space = {
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "batch_size": CategoricalDistribution([16, 32, 64]),
        "depth": IntDistribution(1, 4),
        HOSTILE: FloatDistribution(0.0, 0.5),
    }
    for i in range(8):
        trial = study.ask(space)
        lr = trial.params["lr"]
        train = [1.0 / (1 + lr * 10 * e) for e in range(6)]
        val = [v + 0.05 * e * (lr > 0.1) for e, v in enumerate(train)]
        trial.set_user_attr("curves", {"train_loss": train, "val_loss": val})
        trial.set_user_attr("hp", {**trial.params, "epochs": 6, "patience": 2})
        trial.set_user_attr("metrics", {"val_accuracy": 1 - val[-1], "n_params": 100 * (i + 1)})
        if len(directions) == 1:
            for epoch, v in enumerate(val, start=1):
                trial.report(1 - v, epoch)
        if i == 6:
            trial.set_user_attr("fail_reason", "training diverged: loss is nan")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif i == 7 and len(directions) == 1:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            values = [1 - val[-1], 100 * (i + 1)][: len(directions)]
            study.tell(trial, values)
    return study


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = launch(p)
        yield launched
        launched.close()


@pytest.mark.parametrize(
    ("directions", "plots"),
    [
        # history, importances, parallel coordinates, slices, intermediate values
        (["maximize"], 5),
        # history x2, Pareto front, importances, parallel coordinates, slices
        (["maximize", "minimize"], 6),
    ],
)
def test_report_renders_its_plots_without_errors(
    browser, tmp_path: Path, directions: list[str], plots: int
) -> None:
    path = tmp_path / "report.html"
    path.write_text(build_report(make_study(tmp_path, directions)), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    errors: list[str] = []
    dialogs: list[str] = []
    fetched: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on(
        "request", lambda r: None if r.url.startswith(("file:", "data:")) else fetched.append(r.url)
    )

    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {plots}",
        timeout=30_000,
    )
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    assert page.locator(".js-plotly-plot").count() == plots
    # Every plot drew data, not just axes: points, lines or bars in its SVG.
    drawn = page.evaluate(
        """[...document.querySelectorAll('.js-plotly-plot')].map(
             p => p.querySelectorAll('path.point, path.js-line, g.trace, .bars path').length)"""
    )
    assert all(n > 0 for n in drawn), drawn
    assert page.title() == f"Report: browser {HOSTILE}"
    assert page.locator("h1").inner_text() == f"Tuning report: browser {HOSTILE}"
    assert page.locator("#diagnosis li.finding").count() >= 2
    assert page.locator("#top-trials tbody tr").count() >= 5
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert [c for c in console if c.startswith("error")] == []
    assert errors == []
    assert dialogs == []  # the hostile name was shown, never run
    assert fetched == []
    page.close()
