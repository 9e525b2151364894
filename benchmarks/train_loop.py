"""Training-loop efficiency: ms per epoch of ``tuner.train`` against two other loops.

Same model (MLP, 2 x 128), data, optimizer (AdamW) and batch size in every arm, one
torch thread:

- ``tuner``: ``tuner.train.train`` (one permutation per epoch, slices, one sync);
- ``dataloader``: the conventional ``DataLoader(TensorDataset, shuffle=True)`` loop
  with ``loss.item()`` per batch;
- ``minimal``: a hand-written tight loop (permutation, slices, nothing else).

An epoch is one pass over the train split plus the validation loss, the same in every
arm; the figure is the time between the first and the last epoch's end, divided by
the epochs in between (the first epoch carries set-up and is left out).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import Goal, Report, Size, figure, interleave, ratios, stats
from tuner.data import Dataset, load_dataset
from tuner.models import build_mlp
from tuner.spec import DatasetSpec
from tuner.train import seed_everything, train

BATCH_SIZES = (16, 64, 256)
LR = 1e-3
Loop = Callable[[torch.nn.Module, Dataset, int, int, int, Callable[[], None]], None]


def _dataset(size: Size) -> Dataset:
    rows = 1500 if size.smoke else 8000
    return load_dataset(DatasetSpec(
        name="synthetic_classification",
        options={"n_samples": rows, "n_features": 32, "n_informative": 16, "n_classes": 10},
    ))


def _tuner(model, data, batch_size, epochs, seed, tick) -> None:  # type: ignore[no-untyped-def]
    hp = {
        "lr": LR, "batch_size": batch_size, "epochs": epochs, "optimizer": {"name": "adamw"},
        "patience": 0,
    }
    train(model, data, hp, seed=seed, on_epoch=lambda epoch, row: tick())


def _dataloader(model, data, batch_size, epochs, seed, tick) -> None:  # type: ignore[no-untyped-def]
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for _ in range(epochs):
        model.train()
        running = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            running += loss.item() * len(xb)
        _val_loss(model, data)
        tick()


def _minimal(model, data, batch_size, epochs, seed, tick) -> None:  # type: ignore[no-untyped-def]
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _val_loss(model, data)
        tick()


def _val_loss(model: torch.nn.Module, data: Dataset) -> float:
    model.eval()
    with torch.inference_mode():
        return F.cross_entropy(model(data.x_val), data.y_val).item()


LOOPS: dict[str, Loop] = {"tuner": _tuner, "dataloader": _dataloader, "minimal": _minimal}


def ms_per_epoch(loop: Loop, data: Dataset, batch_size: int, epochs: int, seed: int) -> float:
    """Milliseconds per epoch after the first, for one fresh model trained by ``loop``."""
    seed_everything(seed)
    model = build_mlp(data.n_features, data.n_classes, depth=2, width=128, dropout=0.0,
                      batch_norm=False)
    ends: list[float] = []
    loop(model, data, batch_size, epochs, seed, lambda: ends.append(time.perf_counter()))
    return 1000 * (ends[-1] - ends[0]) / (len(ends) - 1)


def run(size: Size) -> Report:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(size)
    finally:
        torch.set_num_threads(threads)


def _run(size: Size) -> Report:
    data = _dataset(size)
    epochs = 3 if size.smoke else 5
    report = Report("train_loop", "Training loop: ms per epoch, one thread")
    report.details = {
        "rows_train": len(data.x_train), "features": data.n_features, "classes": data.n_classes,
        "model": "mlp depth 2 width 128", "optimizer": "adamw", "epochs_per_run": epochs,
        "ms_per_epoch": {},
    }
    for bs in BATCH_SIZES:
        arms = {
            name: (lambda seed, loop=loop, bs=bs: ms_per_epoch(loop, data, bs, epochs, seed))
            for name, loop in LOOPS.items()
        }
        ms = interleave(range(size.seeds), arms)
        report.details["ms_per_epoch"][bs] = {k: stats(v).__dict__ for k, v in ms.items()}
        report.figures.append(figure(
            f"dataloader / tuner, batch {bs}", ratios(ms["dataloader"], ms["tuner"]),
            Goal(">=", 2.0) if bs == 256 else None,
            "how much faster tuner's loop is than the conventional one",
        ))
        report.figures.append(figure(
            f"tuner / minimal, batch {bs}", ratios(ms["tuner"], ms["minimal"]), Goal("<=", 1.1),
            "tuner's cost over a hand-written tight loop",
        ))
    return report
