"""Test helpers for recurrent mixers whose states are (nested) dataclasses of tensors: run a forward and
a backward with random cotangents on the output AND every tensor of the final state, and collect the
outputs, final states and every gradient (input, initial state, parameters) by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from memnets.testing import assert_close


def _children(state: Any) -> dict[str, Any]:
    """The named parts of a state: dataclass fields, dict items, tuple/list entries; scalars have none."""
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if isinstance(state, dict):
        return {str(k): v for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return {str(i): v for i, v in enumerate(state)}
    return {}


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    if isinstance(state, Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{n: map_state(fn, v) for n, v in _children(state).items()})
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, v) for v in state)
    return state


def state_tensors(state: Any, prefix: str = "state") -> dict[str, Tensor]:
    if isinstance(state, Tensor):
        return {prefix: state}
    out: dict[str, Tensor] = {}
    for name, part in _children(state).items():
        out.update(state_tensors(part, f"{prefix}.{name}"))
    return out


def random_state(mixer: nn.Module, x: Tensor, cu_seqlens: Tensor | None = None, scale: float = 0.5) -> Any:
    """A state of the right shapes with random entries (from a forward on random input)."""
    with torch.no_grad():
        _, state = mixer(torch.randn_like(x), cu_seqlens=cu_seqlens)
    return map_state(lambda t: scale * torch.randn_like(t), state)


def forward_backward(
    mixer: nn.Module,
    x: Tensor,
    state: Any = None,
    cu_seqlens: Tensor | None = None,
    run: Callable[..., tuple[Tensor, Any]] | None = None,
    seed: int = 1,
) -> dict[str, Tensor]:
    """Outputs, final state and gradients (``grad.x``, ``grad.state.*``, ``grad.<param>``) of
    ``run(x, state, cu_seqlens)`` (default: ``mixer.forward``) under random cotangents."""
    run = run or (lambda x, s, cu: mixer(x, state=s, cu_seqlens=cu))
    x = x.detach().clone().requires_grad_()
    state = map_state(lambda t: t.detach().clone().requires_grad_(), state)
    mixer.zero_grad(set_to_none=True)
    y, new_state = run(x, state, cu_seqlens)
    outs = {"y": y, **state_tensors(new_state)}
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in outs.values())
    loss.backward()
    result = {name: t.detach() for name, t in outs.items()}
    result["grad.x"] = x.grad
    for name, t in state_tensors(state).items():
        result[f"grad.{name}"] = t.grad
    for name, p in mixer.named_parameters():
        result[f"grad.{name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    return result


def with_leaf_grads(outs: dict[str, Tensor], leaves: dict[str, Tensor], seed: int = 1) -> dict[str, Tensor]:
    """``outs`` plus ``d<name>``, the gradient of every leaf (zeros where unused), under random float64
    cotangents on every output (drawn in ``outs``' order on the default device)."""
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    loss = sum(
        (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs.values()
    )
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {
        **outs,
        **{f"d{n}": torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(leaves, grads)},
    }


def assert_all_close(ref: dict[str, Tensor], out: dict[str, Tensor]) -> None:
    assert ref.keys() == out.keys(), f"different results: {sorted(ref.keys() ^ out.keys())}"
    for name in ref:
        assert_close(name, ref[name], out[name])
