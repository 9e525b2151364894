"""Training criteria by name: ``make_loss({"name": "focal", "gamma": 2.0}, task)``.

Every criterion takes the model's raw output and the targets as ``tuner.data`` gives
them: logits ``[n, k]`` with class indices, or ``[n, 1]`` with float targets ``[n]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner.spec import CLASSIFICATION_LOSSES, Task


class FocalLoss(nn.Module):
    """Cross entropy scaled by ``(1 - p_true) ** gamma`` (Lin et al. 2017), which
    down-weights examples the model already gets right; ``gamma=0`` is cross entropy."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
        return -((1 - log_p.exp()) ** self.gamma * log_p).mean()


class _Flat(nn.Module):
    """A regression loss fed ``[n, 1]`` model outputs against ``[n]`` targets."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(output.squeeze(-1), target)


def _huber(delta: float) -> nn.Module:
    if delta <= 0:
        raise ValueError(f"huber delta must be positive, got {delta}; use l1 for delta -> 0")
    return _Flat(nn.HuberLoss(delta=delta))


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "label_smoothing": lambda smoothing: nn.CrossEntropyLoss(label_smoothing=smoothing),
    "focal": FocalLoss,
    "mse": lambda: _Flat(nn.MSELoss()),
    "l1": lambda: _Flat(nn.L1Loss()),
    "huber": _huber,
    "smooth_l1": lambda beta: _Flat(nn.SmoothL1Loss(beta=beta)),
}


def make_loss(loss: dict[str, Any], task: Task) -> nn.Module:
    """The criterion ``loss["name"]`` with its parameters (defaults already filled in)."""
    name = loss["name"]
    if (name in CLASSIFICATION_LOSSES) != (task == "classification"):
        fitting = [n for n in LOSSES if (n in CLASSIFICATION_LOSSES) == (task == "classification")]
        raise ValueError(f"loss {name!r} does not fit a {task} dataset; use {', '.join(fitting)}")
    return LOSSES[name](**{k: v for k, v in loss.items() if k != "name"})
