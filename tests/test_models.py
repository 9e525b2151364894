"""Model builders: shapes, batch norm and dropout as asked, parameter counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tuner.models import build_cnn, build_mlp, count_parameters

torch.set_num_threads(1)

Builder = Callable[..., nn.Module]
BUILDERS: dict[str, Builder] = {
    "mlp": lambda **kw: build_mlp(64, 10, **kw),
    "cnn_image": lambda **kw: build_cnn((1, 8, 8), 64, 10, **kw),
    "cnn_vector": lambda **kw: build_cnn(None, 64, 10, **kw),
}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_flat_inputs_give_one_row_of_outputs_each(kind: str) -> None:
    model = BUILDERS[kind](depth=2, width=8, dropout=0.0, batch_norm=False)
    assert model(torch.randn(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("batch_norm", [True, False])
def test_batch_norm_layers_present_iff_asked(kind: str, batch_norm: bool) -> None:
    model = BUILDERS[kind](depth=3, width=8, dropout=0.0, batch_norm=batch_norm)
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    assert len(norms) == (3 if batch_norm else 0)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_dropout_is_active_only_in_train_mode(kind: str) -> None:
    torch.manual_seed(0)
    model = BUILDERS[kind](depth=2, width=16, dropout=0.5, batch_norm=False)
    x = torch.randn(4, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_no_dropout_layer_without_dropout() -> None:
    model = build_mlp(4, 2, depth=2, width=8, dropout=0.0, batch_norm=False)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_cnn_uses_2d_convolutions_for_images_and_1d_otherwise() -> None:
    image = build_cnn((1, 8, 8), 64, 10, depth=1, width=4, dropout=0.0, batch_norm=False)
    vector = build_cnn(None, 13, 3, depth=1, width=4, dropout=0.0, batch_norm=False)
    assert any(isinstance(m, nn.Conv2d) for m in image.modules())
    assert any(isinstance(m, nn.Conv1d) for m in vector.modules())
    assert vector(torch.randn(2, 13)).shape == (2, 3)


def test_mlp_of_depth_zero_is_linear() -> None:
    model = build_mlp(4, 3, depth=0, width=8, dropout=0.0, batch_norm=False)
    assert count_parameters(model) == 4 * 3 + 3


def test_count_parameters_counts_trainable_weights() -> None:
    model = build_mlp(4, 3, depth=1, width=5, dropout=0.0, batch_norm=False)
    assert count_parameters(model) == (4 * 5 + 5) + (5 * 3 + 3)
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 5 + (5 * 3 + 3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_cnn((1, 8, 8), 60, 10, depth=1, width=4, dropout=0, batch_norm=False),
         "holds 64 values but the data has 60 features"),
        (lambda: build_cnn(None, 8, 2, depth=0, width=4, dropout=0, batch_norm=False),
         "depth >= 1"),
        (lambda: build_mlp(8, 2, depth=1, width=4, dropout=1.0, batch_norm=False),
         r"dropout must be in \[0, 1\)"),
        (lambda: build_mlp(8, 2, depth=1, width=0, dropout=0, batch_norm=False), "width >= 1"),
    ],
)
def test_bad_shapes_are_refused(build: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
