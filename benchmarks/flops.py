"""Model-FLOP estimates (counted here from each op's matmuls) and device peaks, in one place.

Counts are matmul FLOPs of a mixer's core op per forward pass (1 multiply-add = 2 FLOP), summed over
batch and heads; projections, gates, norms and elementwise/SFU work are not counted (the fla / FA
convention, so TFLOP/s compare with their tables). fwd+bwd = 3.5 × fwd for every op (exact for
attention, as FlashAttention's benchmarks count it, and for chunked linear attention; an estimate, ±20%,
for the delta rule and MLP memories, whose backward recomputes part of the forward). A mixer with no
entry in ``MIXER_FLOPS`` reports "n/a" — add a line here when a family's formula is known, keyed by its
registered name.

``model_flops`` adds the dense matmuls of a whole LM (every ``nn.Linear`` and the output head:
2 FLOP per weight per token) to the mixers' core ops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

BWD_FACTOR = 3.5  # fwd+bwd / fwd

# Dense bf16/fp16 tensor-core peaks in TFLOP/s (datasheet, never the 2:4-sparse figure), fp32 CUDA-core
# peaks (NVIDIA datasheets), and the GEMM ceilings measured on our machines (an 8192³ bf16 GEMM on random
# data, the denominator of "% of achievable").
PEAKS: dict[str, dict[str, float]] = {
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "measured_bf16": 798.0},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "measured_bf16": 788.0},
}


def _head_dims(options: dict[str, Any], d_model: int, num_heads: int) -> int:
    return options.get("head_dim") or d_model // num_heads


def attention_fwd(B: int, T: int, H: int, D: int, window: int | None = None, causal: bool = True) -> float:
    """4·B·H·T²·D/2 causal (the FlashAttention benchmarks' convention); a sliding window of W keys per query
    gives 4·B·H·T·min(W, T)·D (its triangle ignored, as the causal /2 is)."""
    if window is not None and window < T:
        return 4.0 * B * H * T * window * D
    return 4.0 * B * H * T * T * D / (2 if causal else 1)


def gated_delta_fwd(B: int, T: int, H: int, K: int, V: int, C: int) -> float:
    """Per token-head 6CK + 4CV + 6KV + (2/3)C², counted from the chunked WY/UT form: tril(βKKᵀ), its
    triangular inverse, W and U, the state update and the output."""
    return B * H * T * (6.0 * C * K + 4.0 * C * V + 6.0 * K * V + 2.0 / 3.0 * C * C)


def _memory_shapes(D: int, expansion: float, depth: int) -> list[tuple[int, int]]:
    if depth <= 1:
        return [(D, D)]
    hidden = int(expansion * D)
    return [(D, hidden)] + [(hidden, hidden)] * (depth - 2) + [(hidden, D)]


def mlp_memory_fwd(
    B: int, T: int, H: int, D: int, C: int, expansion: float, depth: int, intra: bool = True
) -> float:
    """The chunked MLP memory (gradients at the chunk-start weights, TTT-style dual-form reads) with
    ``depth`` layers (D → E·D → … → D; depth 1 is a D×D linear memory):
    per token, write = forward GEMMs + weight gradients + input gradients of all but the first layer,
    read = forward GEMMs through the updated memory, intra-chunk correction 2C(in+out) per layer,
    and the per-chunk momentum/decay update, ~6·E·D² fp32 FLOP per chunk for depth 2 (3 per weight).
    ``intra=False`` for memories read at the chunk-start state (no in-chunk causal correction)."""
    shapes = _memory_shapes(D, expansion, depth)
    gemm = sum(2.0 * a * b for a, b in shapes)
    write = gemm + gemm + sum(2.0 * a * b for a, b in shapes[1:])
    read = gemm
    intra = sum(2.0 * C * (a + b) for a, b in shapes) if intra else 0.0
    update = 3.0 * sum(a * b for a, b in shapes) / C
    return B * H * T * (write + read + intra + update)


def _memory(o: dict[str, Any]) -> tuple[float, int]:
    """The memory network's expansion and depth from a mixer's ``memory`` options (their defaults)."""
    m = o.get("memory") or {}
    m = m if isinstance(m, dict) else dataclasses.asdict(m)  # a config mapping or a MemorySpec
    return m.get("expansion", 4.0), m.get("depth", 2)


def _titans(o: dict[str, Any], B: int, T: int, d: int, H: int) -> float:
    D = _head_dims(o, d, H)
    return mlp_memory_fwd(B, T, H, D, o.get("chunk_size", 16), *_memory(o))


def _titans_windowed(o: dict[str, Any], B: int, T: int, d: int, H: int) -> float:
    D = _head_dims(o, d, H)
    window = o.get("window", 64) + o.get("num_persistent", 0)
    return _titans(o, B, T, d, H) + attention_fwd(B, T, H, D, window)


def _titans_mac(o: dict[str, Any], B: int, T: int, d: int, H: int) -> float:
    # retrieval read (one more pass through the memory) + attention inside segments over
    # [persistent | retrieved | segment] (2S causal keys per query on average S) + the memory on y.
    D = _head_dims(o, d, H)
    S = min(o.get("segment_size", 64), T)
    shapes = _memory_shapes(D, *_memory(o))
    retrieval = B * H * T * sum(2.0 * a * b for a, b in shapes)
    attn = 4.0 * B * H * T * (S + o.get("num_persistent", 0)) * D
    return _titans(o, B, T, d, H) + attn + retrieval


def _tnt(o: dict[str, Any], B: int, T: int, d: int, H: int) -> float:
    # one MLP memory per local chunk size (in-chunk correction) + the global memory, which reads at
    # its chunk-start state (no in-chunk term); the Q-K projections are not counted.
    D = _head_dims(o, d, H)
    E, depth = _memory(o)
    locals_ = o.get("chunk_size", 16)
    locals_ = [locals_] if isinstance(locals_, int) else list(locals_)
    total = sum(mlp_memory_fwd(B, T, H, D, c, E, depth) for c in locals_)
    if o.get("global_memory", True):
        total += mlp_memory_fwd(B, T, H, D, min(o.get("global_chunk_size", 2048), T), E, depth, intra=False)
    return total


def _gated_deltanet(o: dict[str, Any], B: int, T: int, d: int, H: int) -> float:
    K = _head_dims(o, d, H)
    return gated_delta_fwd(B, T, H, K, int(K * o.get("expand_v", 1.0)), o.get("chunk_size", 64))


def _mom(o: dict[str, Any], B: int, T: int, d: int, H: int) -> float:
    # (topk + shared) gated-delta passes over the tokens when routing is balanced.
    copies = o.get("topk", 2) + (1 if o.get("shared_memory", True) else 0)
    return copies * _gated_deltanet(o, B, T, d, H)


# name -> f(options, B, T, d_model, num_heads) = forward FLOPs of the mixer's core op.
MIXER_FLOPS: dict[str, Callable[[dict[str, Any], int, int, int, int], float]] = {
    "attention": lambda o, B, T, d, H: attention_fwd(B, T, H, d // H, o.get("window")),
    "titans": _titans,
    "titans_mag": _titans_windowed,
    "titans_mal": _titans_windowed,
    "titans_mac": _titans_mac,
    # Miras variants: the same MLP-memory GEMMs as Titans; their losses/retention add only
    # elementwise and SFU work, not counted.
    "moneta": _titans,
    "yaad": _titans,
    "memora": _titans,
    "tnt": _tnt,
    "gated_deltanet": _gated_deltanet,
    "mom": _mom,
}


def full_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The mixer's constructor defaults overridden by ``options``."""
    from memnets.registry import mixer_options

    return {**{k: default for k, (_, default) in mixer_options(name).items()}, **options}


def mixer_flops(
    name: str, options: dict[str, Any], B: int, T: int, d_model: int, num_heads: int
) -> tuple[float, float] | None:
    """(fwd, fwd+bwd) core-op FLOPs of one mixer call, or None when no formula is known."""
    f = MIXER_FLOPS.get(name)
    if f is None:
        return None
    fwd = f(full_options(name, options), B, T, d_model, num_heads)
    return fwd, BWD_FACTOR * fwd


def model_flops(model: torch.nn.Module, B: int, T: int) -> tuple[float, float] | None:
    """(fwd, fwd+bwd) FLOPs of a memnets ``LM``: dense matmuls (each ``nn.Linear`` inside the blocks
    plus the output head, 2 per weight per token, ×3 for fwd+bwd) + each layer's mixer core op.
    None when a layer's mixer has no formula."""
    cfg = model.config
    dense = 0.0
    for block in model.blocks:
        dense += sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    dense += model.head.weight.numel()
    dense_fwd = 2.0 * dense * B * T
    core = [
        mixer_flops(b.mixer_name, cfg.mixer_options.get(b.mixer_name, {}), B, T, cfg.d_model, cfg.num_heads)
        for b in model.blocks
    ]
    if any(c is None for c in core):
        return None
    return dense_fwd + sum(c[0] for c in core), 3.0 * dense_fwd + sum(c[1] for c in core)


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Datasheet dense peak for ``dtype`` on a known GPU; None on CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    card = next((v for k, v in PEAKS.items() if k in name), None)
    if card is None:
        return None
    key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if key is None:
        key = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    return card[key]
