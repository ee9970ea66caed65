"""Test helpers for recurrent mixers whose states are (nested) dataclasses of tensors: run a forward and
a backward with random cotangents on the output AND every tensor of the final state, and collect the
outputs, final states and every gradient (input, initial state, parameters) by name. Also the checks
that several mixer families' tests share: decoding and split calls equal one call, two backends give
the same gradients, bf16 stays finite, ``generate`` matches the parallel forward; and the seeded float64
draws the memory kernels' tests build their problems from (:class:`Draws`)."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import memnets
from memnets.testing import RATIO, assert_close, rel_err

# Where the kernel tests run: cpu (Triton's interpreter) unless a GPU run sets
# MEMNETS_KERNEL_TEST_DEVICE=cuda and TRITON_INTERPRET=0 (scripts/gpu_check.py, step kernels).
KERNEL_DEVICE = torch.device(os.environ.get("MEMNETS_KERNEL_TEST_DEVICE", "cpu"))


class Draws:
    """Float64 draws from one generator seeded with ``seed`` (on ``device``, by default the default
    device: a kernel test's ``kernel_device``), in call order."""

    def __init__(self, seed: int, device: str | torch.device | None = None) -> None:
        self.g = torch.Generator(device=device or torch.get_default_device()).manual_seed(seed)

    def normal(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.g, dtype=torch.float64)

    def uniform(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.g, dtype=torch.float64)

    def qkv(self, *shape: int) -> tuple[Tensor, Tensor, Tensor]:
        """Queries and keys l2-normalised over the last dimension (as Titans feeds its memory), values
        standard normal."""
        q, k, v = (self.normal(*shape) for _ in range(3))
        return q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True), v


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
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
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


def decode(mixer: nn.Module, x: Tensor) -> tuple[Tensor, Any]:
    """``x [B, T, d]`` fed through ``mixer.step`` token by token from no state: the outputs
    ``[B, T, d]`` and the state after the last token."""
    state, ys = None, []
    for t in range(x.shape[1]):
        yt, state = mixer.step(x[:, t], state)
        ys.append(yt)
    return torch.stack(ys, 1), state


def check_decode_no_grad(mixer: nn.Module, x: Tensor) -> None:
    """Without autograd (as a server decodes), ``mixer(x)`` equals decoding ``x`` token by token."""
    with torch.no_grad():
        y, _ = mixer(x)
        decoded, _ = decode(mixer, x)
    assert_close("decode", y, decoded)


def check_decode_and_split(label: str, mixer: nn.Module, x: Tensor, split: int) -> tuple[Any, Any, Any]:
    """The mixer contract (``memnets/mixers/base.py``): ``mixer(x)`` equals decoding ``x`` token by
    token and equals two calls split before token ``split``. Returns the final states of the whole
    call, of the decoding and of the split calls, for the caller's own checks on them."""
    y, final = mixer(x)
    decoded, state = decode(mixer, x)
    assert_close(f"{label} decode", y, decoded)
    y1, s = mixer(x[:, :split])
    y2, s2 = mixer(x[:, split:], s)
    assert_close(f"{label} split", y, torch.cat([y1, y2], 1))
    return final, state, s2


def check_packed_equals_separate(mixer: nn.Module, d_model: int = 16) -> None:
    """Two float64 sequences (5 and 10 tokens) packed in one row with ``cu_seqlens`` give what each
    gives alone."""
    a, b = torch.randn(1, 5, d_model, dtype=torch.float64), torch.randn(1, 10, d_model, dtype=torch.float64)
    packed, _ = mixer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 5, 15]))
    assert_close("first", mixer(a)[0], packed[:, :5])
    assert_close("second", mixer(b)[0], packed[:, 5:])


def check_same_outputs_and_grads(
    reference: nn.Module, other: nn.Module, x: Tensor, cot: Tensor, every_param_learns: bool = False
) -> None:
    """Two mixers with the same parameters (e.g. two backends) give the same output, input gradient and
    parameter gradients under the cotangent ``cot``; with ``every_param_learns``, no parameter's
    gradient is missing or zero."""
    res = []
    for m in (reference, other):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        (y * cot).sum().backward()
        res.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    assert_close("y", res[0][0], res[1][0])
    assert_close("dx", res[0][1], res[1][1])
    for n, g in res[0][2].items():
        if every_param_learns:
            assert g is not None and torch.count_nonzero(g) > 0, f"no gradient reaches {n}"
        assert_close(f"d{n}", g, res[1][2][n])


def _outputs_and_grads(mixer: nn.Module, x: Tensor, cot: Tensor) -> dict[str, Tensor]:
    """Output, input gradient and parameter gradients of ``mixer`` at ``x`` (cast to its dtype)."""
    xi = x.to(next(mixer.parameters()).dtype).clone().requires_grad_()
    y, _ = mixer(xi)
    (y * cot.to(y.dtype)).sum().backward()
    return {"y": y.detach(), "dx": xi.grad, **{f"d{n}": p.grad for n, p in mixer.named_parameters()}}


def check_against_float64(
    reference: nn.Module, other: nn.Module, x: Tensor, cot: Tensor, factor: float, per_call: bool = False
) -> None:
    """``other`` (float32, e.g. a kernel backend) against ``reference`` (its PyTorch twin) run in float64:
    output, input and parameter gradients within float32's ratio plus ``factor`` times the float32
    ``reference``'s own distance to float64 (for problems whose gradients amplify round-off, where two
    float32 paths need not agree to float32's ratio); every parameter learns. ``per_call``: that distance
    is the largest over the call's output and gradients, not each tensor's own: where every gradient
    passes through the same ill-conditioned step, one float32 path can round a tensor luckily that the
    other does not, and the per-tensor distance then understates the problem's round-off."""
    ref = _outputs_and_grads(copy.deepcopy(reference).double(), x, cot)
    own = _outputs_and_grads(reference, x, cot)
    out = _outputs_and_grads(other, x, cot)
    distance = {n: rel_err(ref[n], own[n]) for n in ref}
    for n in ref:
        assert out[n] is not None and torch.count_nonzero(out[n]) > 0, f"no gradient reaches {n}"
        scale = max(distance.values()) if per_call else distance[n]
        assert_close(n, ref[n], out[n], ratio=RATIO[torch.float32] + factor * scale)


def check_bf16_long_sequence_finite(mixer: nn.Module, d_model: int) -> None:
    """T = 4096 under bf16 autocast: a bf16 output, finite outputs, final memory weights and gradients
    (input and parameters)."""
    x = torch.randn(1, 4096, d_model, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, st = mixer(x)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(w).all() for w in st.memory.weights)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters() if p.grad is not None)


def check_generate_matches_forward(name: str, opts: dict[str, Any], max_new_tokens: int) -> None:
    """A 2-layer model of mixer ``name``: greedy ``generate`` (recurrent steps) picks the argmax of the
    parallel forward's logits at every new token."""
    cfg = memnets.ModelConfig(
        vocab_size=32, d_model=16, n_layers=2, num_heads=2, mixer=name, mixer_options={name: opts}
    )
    model = memnets.build_model(cfg).double().eval()
    prompt = torch.randint(0, 32, (2, 5))
    out = model.generate(prompt, max_new_tokens=max_new_tokens)
    logits = model(out[:, :-1])
    assert torch.equal(out[:, 5:], logits[:, 4:].argmax(-1))
    assert model.state_size(64) > 0
