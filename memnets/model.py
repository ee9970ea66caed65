"""The language model shared by every family: token embedding, a stack of pre-norm blocks
(norm -> token mixer -> residual; norm -> SwiGLU MLP -> residual), final RMSNorm, tied head."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .compiled import recomputed_steps
from .mixers.mom import pooled_load_balancing_loss
from .modules import RMSNorm, SwiGLU
from .registry import build_mixer, check_mixer_options
from .validation import ConfigError


@dataclass
class ModelConfig:
    """``mixer`` is one registered name for every layer, or a list cycled over the layers for hybrids
    (``[titans, titans, titans, attention]`` puts attention in every fourth layer). ``mixer_options``
    maps a mixer name to the keyword options of its constructor. ``max_position_embeddings > 0`` adds
    learned absolute position embeddings for that many positions (zoology's MQAR attention baselines
    use them; memory mixers do not need them)."""

    vocab_size: int | None = None  # None: taken from the data by the trainer
    d_model: int = 128
    n_layers: int = 2
    num_heads: int = 2
    mixer: str | list[str] = "attention"
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlp_ratio: float = 4.0
    max_position_embeddings: int = 0
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def layer_mixers(self) -> list[str]:
        names = [self.mixer] if isinstance(self.mixer, str) else list(self.mixer)
        if not names:
            raise ConfigError("model.mixer must name at least one mixer")
        return [names[i % len(names)] for i in range(self.n_layers)]

    def validate(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers", "num_heads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 1")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.max_position_embeddings < 0:
            raise ConfigError(
                f"model.max_position_embeddings={self.max_position_embeddings} must be >= 0 (0 = none)"
            )
        if self.mlp_ratio < 0:
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} must be >= 0 (0 drops the MLP)")
        used = set(self.layer_mixers())
        for name in used:
            check_mixer_options(name, self.mixer_options.get(name, {}), f"model.mixer_options.{name}")
        for name in self.mixer_options:
            if name not in used:
                raise ConfigError(
                    f"model.mixer_options.{name} is given but no layer uses mixer '{name}' "
                    f"(model.mixer={self.mixer})"
                )


def mlp_hidden(d_model: int, ratio: float) -> int:
    """SwiGLU hidden width: 2/3 of ``ratio * d_model`` (same parameter count as a GELU MLP of that
    ratio), rounded up to a multiple of 32."""
    return int(math.ceil(ratio * d_model * 2 / 3 / 32) * 32)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: str) -> None:
        super().__init__()
        self.mixer_name = mixer
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = build_mixer(mixer, cfg.d_model, cfg.num_heads, **cfg.mixer_options.get(mixer, {}))
        self.mlp = None
        if cfg.mlp_ratio > 0:
            self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp = SwiGLU(cfg.d_model, mlp_hidden(cfg.d_model, cfg.mlp_ratio))

    def forward(self, x: Tensor, state: Any = None, cu_seqlens: Tensor | None = None) -> tuple[Tensor, Any]:
        y, state = self.mixer(self.norm1(x), state=state, cu_seqlens=cu_seqlens)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = self.mixer.step(self.norm1(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state


def _run_block(block: nn.Module, x: Tensor, state: Any, cu_seqlens: Tensor | None, recompute_chunks: bool):
    """One block's forward, its memories' chunk steps recomputed in the backward where asked (also
    inside a block checkpoint's re-run, which happens outside the model's forward)."""
    with recomputed_steps(recompute_chunks):
        return block(x, state, cu_seqlens)


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        if cfg.vocab_size is None:
            raise ConfigError(
                "model.vocab_size is not set (the trainer fills it from the data; set it when building directly)"
            )
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = (
            nn.Embedding(cfg.max_position_embeddings, cfg.d_model) if cfg.max_position_embeddings else None
        )
        self.blocks = nn.ModuleList(Block(cfg, name) for name in cfg.layer_mixers())
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # activation checkpointing per block (``train.activation_checkpointing``): the training forward
        # keeps only each block's input and the backward re-runs the block, so one block's activations
        # are alive at a time instead of all of them (a memory mixer's chunk loop saves its per-chunk
        # states and reads: most of a tiny model's training memory)
        self.checkpoint_blocks = False
        # the memories' chunk steps recomputed in the backward (``train.memory_recompute``,
        # memnets.compiled.recomputed_steps): one state per chunk kept instead of its intermediates
        self.recompute_memory_chunks = False

    def _init_weights(self) -> None:
        """Normal(0, init_std) for embeddings and the standard linear layers' weights; output
        projections of residual branches are scaled by 1/sqrt(2 * n_layers) (GPT-2). Mixers that need
        their own initialisation (gate biases, memory weights) do it in their constructors, which this
        does not override: only ``nn.Linear`` weights named ``out``/``w_down``/... are touched here."""
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=std)
        for block in self.blocks:
            if block.mlp is not None:
                for lin in (block.mlp.w_gate, block.mlp.w_up):
                    nn.init.normal_(lin.weight, std=std)
                nn.init.normal_(block.mlp.w_down.weight, std=std / math.sqrt(2 * self.config.n_layers))
        if not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)

    @property
    def aux_loss(self) -> Tensor | None:
        """Sum of the auxiliary losses the mixers set in the last forward (``None`` when none did),
        plus one load-balancing loss pooled over the layers whose mixers set ``router_stats``
        (MoM's ``aux_loss: pooled``)."""
        losses = [b.mixer.aux_loss for b in self.blocks if getattr(b.mixer, "aux_loss", None) is not None]
        stats = [
            b.mixer.router_stats for b in self.blocks if getattr(b.mixer, "router_stats", None) is not None
        ]
        if stats:
            losses.append(pooled_load_balancing_loss(stats))
        return torch.stack(losses).sum() if losses else None

    def _embed(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            limit = self.config.max_position_embeddings
            if int(positions.max()) >= limit:
                raise ValueError(
                    f"position {int(positions.max())} is beyond model.max_position_embeddings={limit}; "
                    "use shorter sequences or a model without absolute positions"
                )
            x = x + self.pos_embed(positions)
        return x

    def forward(
        self,
        input_ids: Tensor,
        states: list[Any] | None = None,
        cu_seqlens: Tensor | None = None,
        return_states: bool = False,
        start_pos: int = 0,
    ) -> Tensor | tuple[Tensor, list[Any]]:
        """``input_ids [B, T] -> logits [B, T, V]`` (and the per-layer states when asked).
        ``start_pos`` is the absolute position of the first token when continuing from ``states``."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        positions = torch.arange(start_pos, start_pos + input_ids.shape[1], device=input_ids.device)
        if cu_seqlens is not None:
            seq = torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)
            positions = positions - cu_seqlens[seq]
        x = self._embed(input_ids, positions)
        states = states if states is not None else [None] * len(self.blocks)
        new_states = []
        training = self.training and torch.is_grad_enabled()
        run = functools.partial(_run_block, recompute_chunks=training and self.recompute_memory_chunks)
        for block, state in zip(self.blocks, states):
            if training and self.checkpoint_blocks:  # the block's re-run recomputes its chunks too
                x, state = torch.utils.checkpoint.checkpoint(
                    run, block, x, state, cu_seqlens, use_reentrant=False
                )
            else:
                x, state = run(block, x, state, cu_seqlens)
            new_states.append(state)
        logits = self.head(self.norm(x))
        return (logits, new_states) if return_states else logits

    def step(self, token: Tensor, states: list[Any], pos: int) -> tuple[Tensor, list[Any]]:
        """One decoding step for the token at absolute position ``pos``: ``token [B] -> logits [B, V]``."""
        x = self._embed(token, torch.full_like(token, pos))
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            new_states.append(state)
        return self.head(self.norm(x)), new_states

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Prefill with the parallel forward, then decode with the recurrent states. Greedy when
        ``temperature`` is 0. Returns ``[B, T + max_new_tokens]``."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        logits, states = self(input_ids, return_states=True)
        next_logits = logits[:, -1]
        out = [input_ids]
        for i in range(max_new_tokens):
            token = _sample(next_logits, temperature, top_k, generator)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                next_logits, states = self.step(token, states, input_ids.shape[1] + i)
        return torch.cat(out, dim=1)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    def state_size(self, seq_len: int) -> int:
        """Recurrent-state numbers per sequence summed over layers (KV cache for attention)."""
        return sum(b.mixer.state_size(seq_len) for b in self.blocks if hasattr(b.mixer, "state_size"))


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
