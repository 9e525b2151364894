"""Model builders for the built-in objectives: a multilayer perceptron and a small CNN.

Both take flat inputs ``[n, n_features]`` (what ``tuner.data`` gives) and return
``[n, n_outputs]`` (class logits, or one value for regression).

>>> model = build_mlp(4, 3, depth=2, width=16, dropout=0.1, batch_norm=True)
>>> count_parameters(model)
435
"""

from __future__ import annotations

import math

from torch import nn

POOL_GRID = 4
"""Side of the pooled feature map the cnn head reads."""


def _check(depth: int, width: int, dropout: float, n_features: int, n_outputs: int) -> None:
    if depth < 0 or width < 1 or n_features < 1 or n_outputs < 1:
        raise ValueError(
            f"need depth >= 0, width >= 1, n_features >= 1, n_outputs >= 1; got depth={depth}, "
            f"width={width}, n_features={n_features}, n_outputs={n_outputs}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _block(
    layer: nn.Module, norm: type[nn.Module] | None, width: int, dropout: float
) -> list[nn.Module]:
    """layer -> [norm] -> ReLU -> [dropout]: the unit both builders stack."""
    parts = [layer, *([norm(width)] if norm else []), nn.ReLU()]
    return parts + ([nn.Dropout(dropout)] if dropout > 0 else [])


def build_mlp(
    n_features: int, n_outputs: int, *, depth: int, width: int, dropout: float, batch_norm: bool
) -> nn.Module:
    """``depth`` hidden layers of ``width`` units (0 gives a linear model), then a linear head."""
    _check(depth, width, dropout, n_features, n_outputs)
    layers: list[nn.Module] = []
    fan_in = n_features
    for _ in range(depth):
        linear = nn.Linear(fan_in, width, bias=not batch_norm)
        layers += _block(linear, nn.BatchNorm1d if batch_norm else None, width, dropout)
        fan_in = width
    layers.append(nn.Linear(fan_in, n_outputs))
    return nn.Sequential(*layers)


def build_cnn(
    image_shape: tuple[int, int, int] | None,
    n_features: int,
    n_outputs: int,
    *,
    depth: int,
    width: int,
    dropout: float,
    batch_norm: bool,
) -> nn.Module:
    """``depth`` 3x3 conv blocks of ``width`` channels, a coarse average pool, linear head.

    The pool keeps a ``POOL_GRID``-sized map rather than one value per channel, so the
    head still sees where strokes are (an 8x8 digit needs that).

    Flat inputs are reshaped inside the model to ``image_shape`` (channels, height,
    width) for 2-D convolutions; without an image shape the feature vector is read as
    a one-channel sequence by 1-D convolutions.
    """
    _check(depth, width, dropout, n_features, n_outputs)
    if depth < 1:
        raise ValueError(f"a cnn needs depth >= 1 conv blocks, got {depth}")
    if image_shape is not None and math.prod(image_shape) != n_features:
        raise ValueError(
            f"image_shape {image_shape} holds {math.prod(image_shape)} values but the data "
            f"has {n_features} features"
        )
    shape = image_shape or (1, n_features)
    conv: type[nn.Conv1d | nn.Conv2d] = nn.Conv2d if image_shape else nn.Conv1d
    norm: type[nn.Module] = nn.BatchNorm2d if image_shape else nn.BatchNorm1d
    grid = [min(POOL_GRID, side) for side in shape[1:]]
    pool = nn.AdaptiveAvgPool2d(tuple(grid)) if image_shape else nn.AdaptiveAvgPool1d(grid[0])
    layers: list[nn.Module] = [nn.Unflatten(1, shape)]
    channels = shape[0]
    for _ in range(depth):
        layer = conv(channels, width, kernel_size=3, padding=1, bias=not batch_norm)
        layers += _block(layer, norm if batch_norm else None, width, dropout)
        channels = width
    layers += [pool, nn.Flatten(), nn.Linear(width * math.prod(grid), n_outputs)]
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters: the model-size metric ``n_params``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
