"""The shared test-time memory engine: memory = a small network trained online by its own inner loss.

Titans, Miras (Moneta/Yaad/Memora), ATLAS and TNT all compose these pieces (the common core of Titans,
arXiv 2501.00663 §3.1-3.2; Miras, arXiv 2504.13173 §5.3; ATLAS, arXiv 2505.23735 §3; TNT, arXiv
2511.07343 §2.2):

* **Architecture** — :class:`MemoryMLP` ``(num_heads, dim, depth, expansion, activation, residual,
  layer_norm)``: per-head fast weights ``W^l [B, H, d_in, d_out]`` (row form ``out = in @ W``), depth 1
  = linear matrix memory. It owns the learnable initial weights ``W_0 [H, d_in, d_out]`` (broadcast
  to the batch by :func:`initial_state`), the LayerNorm's outer scale/shift, and the hand-written
  derivatives the chunked path needs (``act_backward``, ``output_grad``). ``read(weights, x)`` is M(x; W).
* **Attentional bias** — any object with ``loss(pred, target, params) -> [B, H, L]`` and
  ``grad(pred, target, params) -> d loss/d pred`` (:class:`AttentionalBias`); :class:`L2Bias` is
  Titans Eq. 12, ‖M(k) − v‖². Per-token bias parameters (e.g. a Huber threshold) travel as
  ``bias_params [B, T, H, ...]``. The reference differentiates ``loss`` with autograd; the chunked
  path only uses ``grad``; tests comparing them therefore check a new bias's derivative for free.
* **Learning rule and retention** — per token and head: ``lr`` (inner step; Titans θ_t, Miras/ATLAS/
  TNT η_t), ``mom`` (momentum; Titans η_t, ATLAS θ_t; ``None`` = plain GD, no momentum state), ``keep``
  (multiplier on the old weights; Titans 1 − α_t, Miras/ATLAS α_t; ``None`` = 1)::

      u_t = ∇_W ℓ(M(k_t; W_{t'}), v_t)     t' = start of t's chunk (t' = t - 1 when chunk_size = 1)
      S_t = mom_t S_{t-1} − lr_t u_t        (Titans Eq. 14)
      W_t = keep_t W_{t-1} + S_t            (Titans Eq. 13; without momentum: keep_t W_{t-1} − lr_t u_t)
      y_t = M(q_t; W_t)                     (read after the write, Titans Eq. 15)

  :func:`chunk_coefficients` gives the closed form inside a chunk (β, f, G; derived here, see
  :mod:`memnets.memory.rule`) computed from
  segment sums of log-gates, so every ratio lies in [0, 1] (no overflow for any gate in [0, 1]).
* **Chunked training form** — per chunk: :func:`key_path` (keys through M at the chunk-start
  weights, bias derivative backpropagated by hand: every token's gradient as rank-one factors
  ``xs[l][j]ᵀ deltas[l][j]``, never materialised), :func:`dual_read` (every token's read with its own
  updated weights: TTT's dual form, arXiv 2407.04620 §2.5, extended here to momentum and decay),
  :func:`segment_end_state` (weights and momentum at the chunk end).
  The state is carried sequentially between chunks.
* **State** — :class:`MemoryState` ``(weights, momentum, anchor, offset)``: ``anchor`` holds the
  chunk-start weights while a chunk is unfinished (``offset`` tokens into it), so feeding a sequence
  in pieces or token by token (decoding) equals one parallel call.

Entry points (tensors ``[B, T, H, D]``, gates ``[B, T, H]`` per head or ``[B, T, H, N]`` per channel,
one entry per output unit of each weight matrix, :func:`gate_units`)::

    y, state = memory_chunked(arch, q, k, v, lr, mom=None, keep=None, state=None, chunk_size=16,
                              bias=L2Bias(), bias_params=None, chunk_end=None)  # parallel PyTorch
    y, state = memory_reference(...same arguments...)   # token-by-token loop, autograd inner gradient
    h = memory_read(arch, state, x)                       # read without writing (Titans MAC Eq. 21)

``chunk_end(weights) -> weights`` is applied whenever a chunk completes (both paths), for rules that
post-process the state per chunk (Moneta's ℓ_q normalisation, Memora's projection). Both run in the
dtype of ``arch``'s parameters (float32 or float64) with autocast disabled and return ``y`` in
``q``'s dtype. The chunked path uses no autograd, so the memory keeps learning under
``torch.no_grad``/``torch.inference_mode`` (serving); the reference needs autograd (not under
inference_mode). Gradients flow to q, k, v, the gates, ``arch``'s parameters and the initial
state. Families that change the rule (Omega windows, Newton-Schulz on momentum, chunk-end
normalisation, local resets) reuse ``key_path``/``dual_read``/``segment_end_state`` with their own
coefficients or post-processing in their own chunk loop, and keep ``memory_reference``-style loops
as their ground truth.
"""

from .architecture import ACTIVATIONS, Activation, MemoryMLP, MemorySpec
from .bias import AttentionalBias, L2Bias
from .engine import (
    KeyPath,
    MemoryState,
    check_inputs,
    dual_layer,
    dual_read,
    finish_chunk_then,
    gate_units,
    initial_state,
    key_path,
    memory_chunked,
    memory_read,
    memory_reference,
    segment_end_state,
)
from .rule import ChunkCoefficients, chunk_coefficients, safe_log, segsum

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "AttentionalBias",
    "ChunkCoefficients",
    "KeyPath",
    "L2Bias",
    "MemoryMLP",
    "MemorySpec",
    "MemoryState",
    "check_inputs",
    "chunk_coefficients",
    "dual_layer",
    "dual_read",
    "finish_chunk_then",
    "gate_units",
    "initial_state",
    "key_path",
    "memory_chunked",
    "memory_read",
    "memory_reference",
    "safe_log",
    "segment_end_state",
    "segsum",
]
