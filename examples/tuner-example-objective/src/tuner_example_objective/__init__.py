"""A tuner plugin: ``resmlp``, a residual MLP for tabular data.

The model is an input projection to ``width`` units, ``blocks`` residual blocks
(``x + dropout(act(norm(linear(x))))``) and a linear head. ``blocks`` is this
family's own search dimension; everything else (learning rate, optimizer, loss,
width, dropout, batch norm, ...) comes from tuner's common dimensions.

Registered in this package's pyproject.toml::

    [project.entry-points."tuner.objectives"]
    resmlp = "tuner_example_objective:RESMLP"

>>> RESMLP.params
{'blocks': <class 'int'>}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tuner.data import Dataset
from tuner.objective import Objective, n_outputs
from tuner.spec import Choice, Dimension, Range, Task

__all__ = ["RESMLP", "ResMLP", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``x + dropout(relu(norm(linear(x))))``: the identity path keeps deep stacks trainable."""

    def __init__(self, width: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=not batch_norm)
        self.norm = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(torch.relu(self.norm(self.linear(x))))


class ResMLP(Objective):
    """The residual MLP family: the common dimensions plus ``blocks``."""

    name = "resmlp"
    description = "Residual MLP for tabular data: blocks residual blocks of width units."
    params = {"blocks": int}  # noqa: RUF012 - read-only, as in tuner.objective.Objective

    def default_space(self, task: Task | None) -> dict[str, Dimension]:
        space = super().default_space(task)
        del space["depth"]  # blocks says how deep this family is
        return {
            **space,
            "blocks": Range(low=1, high=4),
            "width": Choice(choices=[32, 64, 128]),
        }

    def build(self, hp: dict[str, Any], data: Dataset) -> nn.Module:
        blocks, width = int(hp["blocks"]), int(hp["width"])
        if blocks < 0 or width < 1:
            raise ValueError(f"resmlp needs blocks >= 0 and width >= 1, got {blocks}, {width}")
        return nn.Sequential(
            nn.Linear(data.n_features, width),
            nn.ReLU(),
            *(ResidualBlock(width, hp["dropout"], hp["batch_norm"]) for _ in range(blocks)),
            nn.Linear(width, n_outputs(data)),
        )


RESMLP = ResMLP()
