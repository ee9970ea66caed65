"""Which parameters the outer AdamW decays: tensors of two or more dimensions, not ``train.no_decay``'s."""

import pytest
import torch
from torch import nn

from memnets.config import TrainConfig
from memnets.optim import build_optimizer
from memnets.registry import build_mixer
from memnets.validation import ConfigError


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.init_weights = nn.ParameterList([nn.Parameter(torch.ones(2, 3, 3))])


def _after_one_zero_gradient_step(**train) -> dict[str, torch.Tensor]:
    """Each parameter after one AdamW step on a zero gradient: only decoupled weight decay moves it."""
    torch.manual_seed(0)
    model = _Block()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.2, **train))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return {n: p.detach() / start[n].where(start[n] != 0, 1) for n, p in model.named_parameters()}


def test_matrices_decay_and_vectors_do_not():
    ratio = _after_one_zero_gradient_step()
    shrink = torch.tensor(1 - 0.5 * 0.2)  # AdamW multiplies a decayed parameter by 1 - lr · weight_decay
    torch.testing.assert_close(ratio["proj.weight"], shrink.expand(4, 3))
    torch.testing.assert_close(ratio["init_weights.0"], shrink.expand(2, 3, 3))
    torch.testing.assert_close(ratio["proj.bias"], torch.ones(4))


def test_no_decay_patterns_leave_those_matrices_alone():
    ratio = _after_one_zero_gradient_step(no_decay=["*init_weights.*"])
    torch.testing.assert_close(ratio["init_weights.0"], torch.ones(2, 3, 3))
    torch.testing.assert_close(ratio["proj.weight"], torch.tensor(0.9).expand(4, 3))


def test_a_no_decay_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ConfigError, match=r"train\.no_decay pattern 'memory\.\*' matches no parameter"):
        build_optimizer(_Block(), TrainConfig(no_decay=["memory.*"]))


@pytest.mark.parametrize(
    ("mixer", "two_dim_gains"),
    [("titans", {"memory.norm_weight", "memory.norm_bias"}), ("paragru", {"bias"})],
)
def test_gains_and_biases_stored_as_matrices_decay_unless_named(mixer, two_dim_gains):
    """The per-head LayerNorm's ``[heads, dim]`` gain and bias and ParaRNN's ``[3, d_h]`` bias decay (the
    configs were tuned so); ``train.no_decay`` takes them out."""

    def undecayed_matrices(**train) -> set[str]:
        model = build_mixer(mixer, 32, 2)
        opt = build_optimizer(model, TrainConfig(**train))
        undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        return {n for n, p in model.named_parameters() if p.dim() >= 2 and id(p) in undecayed}

    assert undecayed_matrices() == set()
    assert undecayed_matrices(no_decay=[f"*{n}" for n in two_dim_gains]) == two_dim_gains
