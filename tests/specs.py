"""The one tiny job spec the tests share: iris, a small MLP, random sampling.

Kept here, not in conftest, so that test modules and helpers can import it.
"""

from __future__ import annotations

from typing import Any

TINY_SPACE: dict[str, Any] = {
    "lr": {"low": 0.01, "high": 0.1, "log": True},
    "batch_size": 64,
    "depth": 1,
    "width": {"choices": [8, 16]},
    "batch_norm": False,
    "dropout": 0.0,
    "optimizer": "adam",
    "schedule": "none",
    "weight_decay": 0.0,
}
"""A small space that trains in a blink on iris: lr and width searched, the rest fixed."""


def tiny_spec(
    name: str = "tiny", n_trials: int = 3, max_epochs: int = 2, **overrides: Any
) -> dict[str, Any]:
    """A job body that trains in a blink; each override replaces that whole field."""
    return {
        "name": name,
        "objective": "mlp",
        "dataset": {"name": "iris"},
        "budget": {"n_trials": n_trials, "max_epochs": max_epochs},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search_space": dict(TINY_SPACE),
        **overrides,
    }
