"""Benchmark registry: every op and model declared once (fla-style), built for a (B, T, H, D) shape.

A :class:`Bench` has a name, a kind and ``build(shape, device, dtype) -> Case``; the :class:`Case`
holds ready inputs and two closures, ``fwd`` and ``fwdbwd``, so input preparation stays outside the
timed region. Entries:

* ``mixer:<name>`` for EVERY registered mixer (enumerated from ``memnets.list_mixers()``), built with
  ``d_model = H·D``, ``num_heads = H`` (and ``head_dim = D`` where the mixer takes it), its defaults
  plus the few options in ``DEFAULT_OPTIONS``; ``chunk_size`` can be overridden per run;
* ``model:<name>``: a 2-layer memnets ``LM`` (vocab 256) with that mixer, fwd = logits, fwdbwd =
  cross-entropy backward;
* peers, op level in the [B, T, H, D] layout, present only when their package imports: ``sdpa``
  (causal ``scaled_dot_product_attention``, always), ``flash_attn``, ``fla.*`` chunk ops,
  ``titans_pytorch`` (NeuralMemory), ``pararnn_torch``.

Adding a peer = one ``Bench(...)`` line with a build function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .flops import BWD_FACTOR, attention_fwd, gated_delta_fwd, mixer_flops, model_flops

# Options a mixer needs to run at benchmark shapes beyond its constructor defaults. Keep this tiny:
# everything else comes from the registry.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {}


@dataclass
class Shape:
    B: int
    T: int
    H: int
    D: int

    def __str__(self) -> str:
        return f"B{self.B}_T{self.T}_H{self.H}_D{self.D}"

    @classmethod
    def parse(cls, text: str) -> Shape:
        """``"B2_T1024_H8_D64"`` or ``"2,1024,8,64"``."""
        parts = text.replace("_", ",").split(",")
        try:
            values = [int(p.lstrip("BTHD")) for p in parts]
            return cls(*values)
        except (TypeError, ValueError):
            raise ValueError(f"shape {text!r}: expected B2_T1024_H8_D64 or 2,1024,8,64") from None


@dataclass
class Case:
    fwd: Callable[[], object]
    fwdbwd: Callable[[], object]
    grads: list[Tensor] = field(default_factory=list)  # tensors whose .grad fwdbwd sets (reset per rep)
    flops: tuple[float, float] | None = None  # (fwd, fwd+bwd) model FLOPs
    forward_with_grad: Callable[[], object] | None = None  # for the saved-for-backward memory count


@dataclass
class Bench:
    name: str
    kind: str  # "mixer" | "model" | "peer"
    build: Callable[[Shape, torch.device, torch.dtype, dict[str, Any]], Case]
    requires: str | None = None  # importable module the entry needs
    gpu_only: bool = False

    def unavailable(self, device: torch.device) -> str | None:
        """Why this entry cannot run here, or None."""
        if self.gpu_only and device.type != "cuda":
            return "needs CUDA"
        if self.requires is not None:
            try:
                importlib.import_module(self.requires)
            except Exception as e:  # peers are optional
                return f"{self.requires} not importable ({type(e).__name__})"
        return None


def _backward_case(
    run: Callable[[], Tensor], params: list[Tensor], inputs: list[Tensor], flops: tuple[float, float] | None
) -> Case:
    """fwd under no_grad (inference), fwdbwd = forward + backward of a fixed random cotangent (never
    ones: constant data runs faster on GPUs and would flatter the timing)."""
    with torch.no_grad():
        cotangent = torch.randn_like(run())

    def fwd() -> Tensor:
        with torch.no_grad():
            return run()

    def fwdbwd() -> None:
        run().backward(cotangent)

    return Case(fwd, fwdbwd, grads=inputs + params, flops=flops, forward_with_grad=run)


# -- memnets mixers and models -------------------------------------------------------------------------


def mixer_build_options(name: str, shape: Shape, overrides: dict[str, Any]) -> dict[str, Any]:
    """Options for ``build_mixer(name, H·D, H, **options)``: ``DEFAULT_OPTIONS``, ``head_dim = D`` where
    accepted, then the per-run overrides that the mixer accepts (e.g. ``chunk_size``)."""
    from memnets.registry import mixer_options

    accepted = mixer_options(name)
    opts = dict(DEFAULT_OPTIONS.get(name, {}))
    if "head_dim" in accepted:
        opts["head_dim"] = shape.D
    opts.update({k: v for k, v in overrides.items() if k in accepted})
    return opts


def mixer_case(name: str) -> Callable[[Shape, torch.device, torch.dtype, dict[str, Any]], Case]:
    def build(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Case:
        from memnets.registry import build_mixer

        d = shape.H * shape.D
        opts = mixer_build_options(name, shape, overrides)
        mixer = build_mixer(name, d, shape.H, **opts).to(device=device, dtype=dtype)
        x = torch.randn(shape.B, shape.T, d, device=device, dtype=dtype, requires_grad=True)
        params = [p for p in mixer.parameters() if p.requires_grad]
        flops = mixer_flops(name, opts, shape.B, shape.T, d, shape.H)
        return _backward_case(lambda: mixer(x)[0], params, [x], flops)

    return build


def lm_case(cfg: Any, shape: Shape, device: torch.device, dtype: torch.dtype) -> Case:
    """A memnets ``LM`` from ``cfg`` (a ``ModelConfig`` with ``vocab_size`` set) on random tokens of
    ``shape.B × shape.T``: fwd = logits, fwdbwd = cross-entropy backward."""
    from memnets.model import LM

    model = LM(cfg).to(device=device, dtype=dtype)
    V = cfg.vocab_size
    ids = torch.randint(0, V, (shape.B, shape.T), device=device)
    labels = torch.randint(0, V, (shape.B, shape.T), device=device)
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd() -> Tensor:
        with torch.no_grad():
            return model(ids)

    def loss() -> Tensor:
        return F.cross_entropy(model(ids).float().flatten(0, 1), labels.flatten())

    def fwdbwd() -> None:
        loss().backward()

    return Case(fwd, fwdbwd, params, model_flops(model, shape.B, shape.T), forward_with_grad=loss)


def model_case(name: str) -> Callable[[Shape, torch.device, torch.dtype, dict[str, Any]], Case]:
    def build(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Case:
        from memnets.model import ModelConfig

        cfg = ModelConfig(
            vocab_size=256,
            d_model=shape.H * shape.D,
            n_layers=2,
            num_heads=shape.H,
            mixer=name,
            mixer_options={name: mixer_build_options(name, shape, overrides)},
        )
        return lm_case(cfg, shape, device, dtype)

    return build


# -- peers ---------------------------------------------------------------------------------------------


def _qkv(shape: Shape, device: torch.device, dtype: torch.dtype, n: int = 3) -> list[Tensor]:
    return [
        torch.randn(shape.B, shape.T, shape.H, shape.D, device=device, dtype=dtype, requires_grad=True)
        for _ in range(n)
    ]


def _attention_flops(shape: Shape) -> tuple[float, float]:
    fwd = attention_fwd(shape.B, shape.T, shape.H, shape.D)
    return fwd, BWD_FACTOR * fwd


def _sdpa(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Case:
    q, k, v = _qkv(shape, device, dtype)

    def run() -> Tensor:
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return o.transpose(1, 2)

    return _backward_case(run, [], [q, k, v], _attention_flops(shape))


def _flash_attn(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Case:
    from flash_attn import flash_attn_func

    q, k, v = _qkv(shape, device, dtype)
    return _backward_case(
        lambda: flash_attn_func(q, k, v, causal=True), [], [q, k, v], _attention_flops(shape)
    )


def _fla_gated_delta(
    shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]
) -> Case:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    q, k, v = _qkv(shape, device, dtype)
    g = F.logsigmoid(torch.randn(shape.B, shape.T, shape.H, device=device)).to(dtype).requires_grad_()
    beta = torch.rand(shape.B, shape.T, shape.H, device=device, dtype=dtype).requires_grad_()
    fwd = gated_delta_fwd(shape.B, shape.T, shape.H, shape.D, shape.D, 64)

    def run() -> Tensor:
        return chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]

    return _backward_case(run, [], [q, k, v, g, beta], (fwd, BWD_FACTOR * fwd))


def _fla_delta(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Case:
    from fla.ops.delta_rule import chunk_delta_rule

    q, k, v = _qkv(shape, device, dtype)
    beta = torch.rand(shape.B, shape.T, shape.H, device=device, dtype=dtype).requires_grad_()
    fwd = gated_delta_fwd(shape.B, shape.T, shape.H, shape.D, shape.D, 64)

    def run() -> Tensor:
        return chunk_delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel=True)[0]

    return _backward_case(run, [], [q, k, v, beta], (fwd, BWD_FACTOR * fwd))


def _titans_pytorch(
    shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]
) -> Case:
    # Not installed where this was written: NeuralMemory(dim, chunk_size, heads, dim_head) returning
    # (retrieved, state) follows its README; a mismatch shows as a "failed: ..." row, not a crash.
    from titans_pytorch import NeuralMemory

    d = shape.H * shape.D
    chunk = overrides.get("chunk_size", 16)
    mem = NeuralMemory(dim=d, chunk_size=chunk, heads=shape.H, dim_head=shape.D).to(
        device=device, dtype=dtype
    )
    x = torch.randn(shape.B, shape.T, d, device=device, dtype=dtype, requires_grad=True)
    fwd = mixer_flops("titans", {"chunk_size": chunk, "head_dim": shape.D}, shape.B, shape.T, d, shape.H)
    return _backward_case(lambda: mem(x)[0], list(mem.parameters()), [x], fwd)


def _pararnn_torch(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Case:
    # Not installed where this was written, so the constructor call is unverified: if the API
    # differs the row reports "failed: ..." instead of a timing; fix it on the first machine that has it.
    import pararnn_torch

    d = shape.H * shape.D
    layer = pararnn_torch.ParaGRU(d, d).to(device=device, dtype=dtype)
    x = torch.randn(shape.B, shape.T, d, device=device, dtype=dtype, requires_grad=True)

    def run() -> Tensor:
        out = layer(x)
        return out[0] if isinstance(out, tuple) else out

    return _backward_case(run, list(layer.parameters()), [x], None)


PEERS: list[Bench] = [
    Bench("sdpa", "peer", _sdpa),
    Bench("flash_attn", "peer", _flash_attn, requires="flash_attn", gpu_only=True),
    Bench(
        "fla.chunk_gated_delta_rule",
        "peer",
        _fla_gated_delta,
        requires="fla.ops.gated_delta_rule",
        gpu_only=True,
    ),
    Bench("fla.chunk_delta_rule", "peer", _fla_delta, requires="fla.ops.delta_rule", gpu_only=True),
    Bench("titans_pytorch.NeuralMemory", "peer", _titans_pytorch, requires="titans_pytorch"),
    Bench("pararnn_torch.ParaGRU", "peer", _pararnn_torch, requires="pararnn_torch"),
]


def all_benches() -> list[Bench]:
    """Every registered mixer (as a mixer and as a 2-layer model) plus the peers."""
    from memnets import list_mixers

    names = list_mixers()
    return (
        [Bench(f"mixer:{n}", "mixer", mixer_case(n)) for n in names]
        + [Bench(f"model:{n}", "model", model_case(n)) for n in names]
        + PEERS
    )
