"""Triton kernels of the chunked update of a two-layer MLP memory (Titans' deep memory, arXiv
2501.00663 §3.1; Miras' Moneta and Yaad, arXiv 2504.13173 §5.3), forward and backward. Yaad, Moneta,
TNT and OmegaNet run it as well as Titans, hence the name: what it computes, not who uses it.

Semantics are exactly those of :func:`memnets.memory.memory_chunked` for ``MemoryMLP(depth=2)``
(residual and LayerNorm on or off, activation gelu (erf form, as ``F.gelu``), silu or tanh), per-token
per-head ``lr`` (Titans θ_t, Miras η_t), optional ``mom`` (Titans η_t) and ``keep`` (Titans
1 − α_t, Miras α_t), and the attentional biases ``L2Bias`` (Titans §3.1 Eq. 12), ``LpBias`` (Moneta, Miras
§5.1 Eq. 10) and ``HuberBias`` (Yaad, Miras §5.1 Eq. 16, both modes, data-dependent threshold δ_t as
``bias_params``). Per chunk of L tokens of one (sequence, head), with chunk-start weights
W1 ``[D, Dh]``, W2 ``[Dh, D]`` and momenta S1, S2 (row form; the dual form of TTT, arXiv 2407.04620 §2.5,
with Titans' momentum and decay, §3.1 Eq. 13-14, unrolled inside the chunk)::

    key path   Z1 = K W1,  A = σ(Z1),  Z2 = A W2,  R = M(K) − V = [K +] [LN](Z2) − V
               Δ = [LN backward of] ℓ'(R),  δ1 = (Δ W2ᵀ) ⊙ σ'(Z1)
               (u_j = k_jᵀ δ1_j and a_jᵀ Δ_j are token j's inner gradients of W1 and W2)
    query path Ẑ1 = β ⊙ (Q W1) + f ⊙ (Q S1) − ((Q Kᵀ) ⊙ G) δ1,   Â = σ(Ẑ1)
               Ẑ2 = β ⊙ (Â W2) + f ⊙ (Â S2) − ((Â Aᵀ) ⊙ G) Δ,   Y = [Q +] [LN](Ẑ2)
               (every token read with its own W_t)
    chunk end  W1' = β_L W1 + f_L S1 − Kᵀ (G[L, :]ᵀ ⊙ δ1),   S1' = m_end S1 − Kᵀ (s_coef ⊙ δ1)
               W2' = β_L W2 + f_L S2 − Aᵀ (G[L, :]ᵀ ⊙ Δ),    S2' = m_end S2 − Aᵀ (s_coef ⊙ Δ)

(index L = the chunk's last token). ℓ' is the bias derivative w.r.t. the memory output: 2R (L2),
p R (R² + ε)^{p/2−1} (ℓ_p), and for Huber 2R on the quadratic branch, else 2δ tanh(s R) ("norm") or
2δ Sign(R) ("coord"). The coefficients β, f, G, m_end, s_coef are those of
:func:`memnets.memory.chunk_coefficients` (segment sums of log-gates, all in [0, 1]); they
are computed in PyTorch on the gates padded to whole chunks (lr = 0, keep = mom = 1: m_end and s_coef
are then those of the last real token; the kernels take β, f and G's row at the tail chunk's last
real token) and autograd takes their gradients back to lr, mom and keep. The kernels take and return
gradients w.r.t. the coefficients.

LN(z) = γ ⊙ (z − mean z)/sqrt(var z + eps) + b with the per-head *outer* scale γ and shift b of
``MemoryMLP(layer_norm=True)``; the kernels return their gradients too. The residual is formed in the
kernels on the key path (R = (K + LN(Z2)) − V in the engine's order: pre-subtracting V − K rounds
differently, which the ill-conditioned LayerNorm + Huber cases amplify) and outside on the reads.

Tiles. The kernels walk tiles of at most ``MAX_TILE`` = 64 tokens (padded to at least 16 rows). A
chunk longer than a tile (or whose tile would not fit the chip, see below) runs as KE tiles of a
divisor of its length: every token's inner gradient is still taken at the *chunk*-start weights (the
key path uses those, refreshed every KE tiles), while the reads and the update walk tile by tile.
That is exact, not an approximation: with the gradients u_s fixed at the chunk start, the recurrence
S_t = mom_t S_{t−1} − lr_t u_s, W_t = keep_t W_{t−1} + S_t is linear, so splitting a chunk's dual form
at any token gives the same W_t (the tile coefficients are ``chunk_coefficients`` at the tile size).
Chunk sizes 8..256 (and TNT's global 2048) therefore all run; a chunk size with no divisor in
8..64 whose tile fits (a prime above 64) is refused.

Reads at the chunk start (``READ_START``, TNT's global memory, arXiv 2511.07343 §4.1, Eq. 5 and 7):
Y = [LN](σ(Q W1) W2) at the chunk-start weights, plain gradient descent (no momentum or decay).

The Omega rule (OmegaNet, ATLAS arXiv 2505.23735 §3.2 Eq. 9-10, parallel form §3.3): token t's inner
gradient sums the gated gradients of the last c = ``window`` tokens, all at the chunk-start weights.
A tile's key path then runs over P = c − 1 more rows, the tokens before it (from the previous tile,
chunk or call: the state carries the last P keys and values, which lead ``k`` and ``v``), and the
coefficient matrix becomes G·Γ ``[L, P + L]`` with the band Γ[n, e] = win_gate[n, P + n − e]
(:func:`~memnets.memory.omega.window_band`, computed in PyTorch, so the window gates' gradients come
from autograd), s_coef likewise s_coefᵀ Γ. Key rows overlap between tiles: the backward writes their
gradients per tile and sums them (``backward._fold_key_rows``).

Kernels (grid: one program per (batch, head), tiles sequential inside, except the split wide forward
and the wide backward's reads; all math in float32, half inputs upcast on load, matmul operands as
``dot_precision`` says, float32 by default):

1. ``_forward_kernel``: carries (W1, W2, S1, S2) over tiles C0 .. C0 + NC, writes y, the state after
   them and the last chunk's start weights (the engine's ``anchor`` when T is not a multiple of the
   chunk). With ``STORE`` it instead writes every tile's start state and skips the reads.
2. ``_backward_kernel``: the same tiles in reverse, carrying the cotangents (dW1, dW2, dS1, dS2) of the
   tile-end state; recomputes the tile's key and query paths from its stored start state (and its
   chunk's start weights) and gives the gradients of q, k, v, the bias parameters, the LayerNorm's γ
   and b, every coefficient and the start state. The second-order terms are included: Δ depends on
   W1, W2 through R (ℓ'' of the bias) and through the LayerNorm's Jacobian at Z2, δ1 on W2 and on Z1
   (σ'' of the activation). The key path's weight cotangents collect over a chunk's tiles and join
   the state's at its first tile.

Memory stays bounded at long T by checkpoint segments (``checkpoint_every`` chunks, default
⌈√chunks⌉): the forward launches once per segment and keeps the state at each segment start; the
backward walks the segments in reverse, re-running the forward from the segment's checkpoint with
``STORE`` (that segment's tile states only) before its backward launch. Saved per (batch, head):
⌈T/C⌉/every + every·KE states instead of one per tile, for one extra forward pass. The wide-state
kernels segment the same way (one launch per segment, whole chunks as tiles), with a third level
where their large states make it pay: each segment's recompute in inner segments of ⌈√every⌉ chunks,
about 3·∛chunks states live for a second forward pass (:func:`~.launch.checkpoint_chunks`). Their
recompute keeps the chunk states at the products' half type where they run in one
(:func:`~.config.chunk_state_dtype`; the checkpoints stay float32).

Both passes are ``torch.library`` custom ops (:mod:`.ops`: ``memnets::mlp_memory_fwd`` / ``_bwd``) with fake
implementations; ``register_autograd`` ties them together.

Not covered (``supports`` names the reason; the mixers then fall back to the PyTorch engine): depth
other than 2, other biases (KL, the dot loss of DLA), Memora's softmax in the wide-state kernels (it acts
on each token's weights entrywise; its own whole-state kernels form every token's weights: :mod:`.simplex`;
Moneta's ℓ_q map, a scalar per matrix, runs per token and at chunk ends in both layouts: :mod:`.end_map`,
:mod:`.wide_maps`), Atlas's Muon (its own kernels, below), the gated memory (Atlas++),
the Huber bias with an Omega window, float64 memories, and states D·Dh beyond the shared-memory limits of
:mod:`.limits`. States that fit no tile of the chunk (D = 64, Dh = 256: Titans at head dim 64) and keys
wider than values (polynomial features of degree > 1, OmegaNet's and Atlas' default: q and k
``[B, T, H, Dk]``, the residual adding their first D columns) run the wide-state kernels
(:mod:`.wide_forward`, :mod:`.wide_backward`: state in global memory, hidden width and key width in
blocks, chunks of at most ``MAX_TILE`` rows with the Omega window's, no packed sequences), picked by
:func:`tile_layout` where :func:`~.limits.runs_wide`, or where ``hidden_block`` is given.

Tensor cores and the GPU's width (the wide-state kernels, where the flagship configs run). Every
large product is hidden-major (:mod:`.wide_forward`): the 64-column hidden block or the head dim is
the matmul's M, so it compiles to bf16 wgmma without warps computing the same rows. The figures below
are the static report's roofline estimates (``scripts/kernel_report.py``; benchmarks/RESULTS.md §22),
at titans-760m, 4 × 4096 tokens, one program per SM. A forward step is now bound by the state's
traffic through L2 (12 D·Dh floats per chunk and program: ≈ 21 µs for the 64 programs), then by its
chain of 86 dependent matmuls (≈ 9 µs); a backward step by that traffic (28 D·Dh floats) plus 3.6 KB
of spill per thread (≈ 113 µs). The state's traffic is a bound of the whole GPU (all programs' bytes
over the L2's bandwidth), so more programs do not lower it; only fewer bytes per chunk do. Ways to
use more than 64 of the 132 SMs, weighed:

* *Hidden width split across programs* (P programs per (sequence, head), NB/P blocks each): the
  latency and compute terms shrink about P×, the state traffic not at all, unless each program's share
  of the state then fits on chip (≤ ~200 KB of shared memory: P ≥ 3 at titans-760m with momentum, 590
  KB per (sequence, head)), which removes the state term and the passes' re-reads. The key path's
  Z2 = Σ_j σ(K W1_j) W2_j and the reads' Σ_j Â_j A_jᵀ cross the split every chunk. Inside one launch
  that needs a thread-block cluster's distributed shared memory, which Triton does not expose to
  kernels, or the P programs co-resident behind a spin barrier, which 64·P programs at one per SM do
  not guarantee past 132 and which the CPU interpreter, running programs one after another, cannot
  test. **Built for the forward as one launch per chunk** (:mod:`.wide_split`): the shares cross
  between launches through global memory, and each launch's program also computes its share of the
  next chunk's Z2, so one launch per chunk suffices; the reads' sums are finished by one parallel
  launch at the end. P comes from :func:`~.config.wide_split` (2 at titans-760m's 4 × 16 heads: 128
  programs, one wave). Static estimate at titans-760m: the forward 13.0 → 7.4 ms (benchmarks/RESULTS.md
  §30), at an assumed 10 µs of host time per Triton launch. Measured without a GPU (§58), a launch
  through ``kernel[grid]`` costs the host 45-90 µs with these kernels' 40-odd arguments, as much as
  the chunk step it launches; the per-chunk launches therefore go through
  :class:`~memnets.kernels.relaunch.Relaunch` (about 9 µs), and the segment and chunk indices are not
  specialised on (``config.SEGMENT_INTS``), so one compiled variant serves them all. The backward's recompute (``STORE``) runs
  the same launches without the reads (benchmarks/RESULTS.md §55). **The backward's recurrence
  too**, once its reads left it (next item): :mod:`.wide_split_backward`, one launch per chunk, whose
  programs finish chunk c (dΔ's shares summed, the key LayerNorm's backward on whole rows, then their
  blocks' layer-1 cotangents) and run chunk c − 1's per-block pass, leaving their shares of dΔ for the
  next launch; Z2 comes from the reads' launch, which computes it anyway. Static estimate at
  titans-760m: the recurrence 58.7 → 15.2 ms (benchmarks/RESULTS.md §56). Not with keys wider than
  values or Moneta's maps, whose backward keeps the reads inline (one program per (sequence, head)).
* *Reads in a separate, fully parallel launch* (B·H·chunks programs): the reads are 6 of the 14
  products of a forward block, but they need every chunk's start state: 4 D·Dh floats per chunk
  written and read again, more traffic than the forward moves now. Rejected for the forward. **Built
  for the backward** (:mod:`.wide_reads`), whose recompute stores those states per segment anyway:
  one launch per recompute segment takes the reads' backward of all its chunks (B·H·chunks programs)
  and leaves the sequential kernel the update's backward, its chain of dependent products about
  halved (benchmarks/RESULTS.md §55); not with Moneta's per-token map, whose scales' cotangents
  need the reads inside the recurrence.
* *Fewer bytes per chunk*: the chunk-start states that the backward's recompute writes and the
  backward reads back, kept at the products' half type (every product reads them so rounded anyway).
  **Built** (:func:`~.config.chunk_state_dtype`, :func:`~.common.load_f32`). Static estimate at
  titans-760m: the backward 39.1 → 32.6 ms, the live chunk states 684 → 558 MB
  (benchmarks/RESULTS.md §57). Two checkpoint levels instead of three would walk 256 chunks of
  recompute instead of 473 (about −5.9 ms) for 16 float32 checkpoints per layer instead of 6. Weighed
  there, not built.
* *Overlapping chunk c's reads with chunk c + 1's key path* (warp specialisation): the reads feed
  nothing downstream, so a second warpgroup could take them and shorten the dependent chain by about
  40%; it adds no programs, moves the same state, and Triton's warp specialisation targets simple
  loops (one producer, one MMA consumer), not a two-pass body. Not built.

Packed sequences (``cu_seqlens``, B = 1, ``VARLEN``): one program per (sequence, head) walks that
sequence's tiles, which restart at its first token (coefficients per sequence tile, gates padded per
sequence, :mod:`memnets.kernels.packing`); every sequence has its own initial and final state. With
the Omega window, each sequence's carried window rows lead its own rows in k and v (sequence n's key
rows start at cu[n] + n·P0), so no window reaches into the sequence before it.

Atlas with Muon once per chunk (ATLAS arXiv 2505.23735 §5 Eq. 32–33, ``muon="chunk"``) runs its own
wide-state kernels (:mod:`.muon_forward`, :mod:`.muon_backward`; entry :mod:`.muon_launch`, custom
ops :mod:`.muon_ops`): no G term (a token's gradient reaches the weights only through the chunk-end
momentum), a third state matrix per layer (the direction O), and Newton–Schulz of each chunk-end
momentum on chip (:mod:`.newton_schulz`). Muon on every token (Eq. 40, ``muon="token"``, the mixer's
default) has a pair of its own (:mod:`.token_muon_forward`, :mod:`.token_muon_backward`): each token's
Newton–Schulz runs in a token loop on chip, layer 1's on coordinates in the span of the chunk-start
momentum and the chunk's keys; hidden widths up to 64 as the per-chunk kernels (32 with one TF32
product per matmul, whose backward outgrows sm_90's shared memory past that).

Modules: :mod:`.config` (launch configuration), :mod:`.common` (shared ``@triton.jit`` pieces),
:mod:`.forward`, :mod:`.backward`, :mod:`.wide_blocks` (the wide-state block layout and shared products),
:mod:`.wide_forward`, :mod:`.wide_split`, :mod:`.wide_backward`, :mod:`.wide_reads` (the backward's reads, apart from
the recurrence), :mod:`.wide_split_backward` (the recurrence split over programs), :mod:`.wide_maps` (Moneta's maps there),
:mod:`.limits` (tiles, ``supports``), :mod:`.ops` (custom ops, autograd), :mod:`.launch` (the entry point),
:mod:`.token_state` (every token's accumulator), :mod:`.end_map` (Moneta's ℓ_q maps), :mod:`.simplex`
and :mod:`.simplex_backward` (Memora's softmax retention and lag token; :mod:`.wide_simplex` and
:mod:`.wide_simplex_backward` in the wide-state layout), and the Muon kernels' :mod:`.muon_forward`, :mod:`.muon_backward`,
:mod:`.newton_schulz`, :mod:`.muon_ops`, :mod:`.muon_launch`, :mod:`.token_muon_forward`,
:mod:`.token_muon_backward`. The model
side (``memnets.memory.kernel_bridge``) builds the descriptors and coefficients and wraps the results
into memory states. Shared memory, register spills and timings: benchmarks/RESULTS.md §9 (the wide-state kernels: §22).
"""

from ..precision import DOT_PRECISIONS
from ..specs import BiasSpec, NetSpec
from .config import ACTIVATIONS, LaunchConfig
from .launch import TileLayout, mlp_memory_chunked, tile_layout
from .limits import (
    DEFAULT_HIDDEN_BLOCK,
    FLOAT32_HIDDEN_BLOCK,
    MAX_STATE_FOR_TILE,
    MAX_TILE,
    MAX_WIDE_DIM_FOR_TILE,
    WIDE_IN_AUTO,
    on_chip_state_too_large,
    supports,
    supports_wide,
    tile,
)

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_HIDDEN_BLOCK",
    "DOT_PRECISIONS",
    "FLOAT32_HIDDEN_BLOCK",
    "MAX_STATE_FOR_TILE",
    "MAX_TILE",
    "MAX_WIDE_DIM_FOR_TILE",
    "WIDE_IN_AUTO",
    "BiasSpec",
    "LaunchConfig",
    "NetSpec",
    "TileLayout",
    "mlp_memory_chunked",
    "on_chip_state_too_large",
    "supports",
    "supports_wide",
    "tile",
    "tile_layout",
]
