"""Optimizers and learning-rate schedules by name, built from resolved hyperparameters.

Fused kernels are used where torch has them for the device (fewer, larger kernels per
step), foreach otherwise. Weight decay, like the L1 penalty, applies to weights only:
biases and normalisation parameters are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR

FUSED = {"sgd", "adam", "adamw", "adagrad"}
"""Optimizers whose fused kernels torch 2.13 offers on CPU and CUDA."""
FUSED_DEVICES = {"cpu", "cuda"}


def penalised_params(model: nn.Module) -> list[nn.Parameter]:
    """Weight matrices and kernels (ndim >= 2): what weight decay and L1 act on."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]


def _kwargs(name: str, p: dict[str, Any]) -> dict[str, Any]:
    """Our branch parameters -> torch keyword arguments."""
    if name == "sgd":
        # Nesterov without momentum is plain SGD; torch would refuse the pair instead.
        return {"momentum": p["momentum"], "nesterov": p["nesterov"] and p["momentum"] > 0}
    if name in ("adam", "adamw"):
        return {"betas": (p["beta1"], p["beta2"])}
    if name == "rmsprop":
        return {"momentum": p["momentum"], "alpha": p["alpha"]}
    return {}


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def make_optimizer(
    model: nn.Module, optimizer: dict[str, Any], *, lr: float, weight_decay: float
) -> Optimizer:
    """``optimizer["name"]`` over the model's parameters, decay on weights only.

    Without decay every parameter is in one group: the same steps, and one fused (or
    foreach) call per step instead of one per group.
    """
    name = optimizer["name"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = penalised_params(model) if weight_decay else []
    ids = {id(p) for p in decay}
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) not in ids], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    devices = {p.device.type for p in model.parameters()}
    fast = (
        {"fused": True}
        if name in FUSED and devices <= FUSED_DEVICES
        else {"foreach": True}
    )
    return OPTIMIZERS[name](groups, lr=lr, **_kwargs(name, optimizer), **fast)


def make_schedule(
    optimizer: Optimizer, schedule: dict[str, Any], *, epochs: int
) -> LRScheduler | None:
    """A per-epoch schedule; cosine anneals to zero over ``epochs``."""
    name = schedule["name"]
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "step":
        return StepLR(optimizer, step_size=schedule["step_size"], gamma=schedule["gamma"])
    return None
