"""``MemnetsForCausalLM``: a ``transformers`` causal LM around :class:`memnets.LM`, for every registered
mixer, with the mixers' recurrent states as the generation cache.

Generation: the first call of ``forward`` runs the parallel ``LM.forward`` over the prompt and returns
the per-layer states in a :class:`MemnetsState`; each following call gets only the new token and runs
``LM.step`` (one recurrent step per layer) from that state, which is what ``LM.generate`` does. Greedy
``model.generate(..., do_sample=False)`` therefore gives the tokens of ``LM.generate(...,
temperature=0)``.

Padding: a recurrent state cannot skip a masked token, so a left-padded batch (what ``generate`` and
lm-evaluation-harness build from prompts of different lengths) is run row by row on each row's real
tokens, each from position 0, and decoded row by row from its own state; the logits at pad positions are
zeros. Right padding needs nothing for the logits (the model is causal), but its state would contain the
pads, so asking for a state then is an error. Beam search is refused: it would need every mixer's state
reordered along the batch, which the mixer contract (``memnets/mixers/base.py``) does not provide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from ..model import LM
from .configuration import MemnetsConfig


@dataclass
class MemnetsState:
    """What generation carries between ``forward`` calls. ``columns``: how many columns of
    ``input_ids`` (padding included) the state has consumed, so ``generate`` feeds only the rest.
    Either ``layers`` (the per-layer mixer states of the whole batch; ``position`` is the absolute
    position of the next token) or ``rows`` (one batch-of-one state per row, after a left-padded
    prompt)."""

    columns: int
    layers: list[Any] | None = None
    position: int = 0
    rows: list[MemnetsState] | None = None


@dataclass
class MemnetsCausalLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    state: MemnetsState | None = None


def _padding_side(mask: Tensor) -> str | None:
    """``None`` (no padding), ``"left"`` (each row: zeros then ones) or ``"right"`` (ones then zeros);
    anything else is an error."""
    mask = mask.bool()
    if bool(mask.all()):
        return None
    # a row is left-padded when its mask never goes from 1 back to 0, right-padded when never 0 -> 1
    rises = (~mask[:, :-1] & mask[:, 1:]).any()
    falls = (mask[:, :-1] & ~mask[:, 1:]).any()
    if not falls:
        return "left"
    if not rises:
        return "right"
    raise ValueError(
        "attention_mask must pad every row on the same side (zeros only before or only after the "
        f"tokens); got {mask.int().tolist()}"
    )


class MemnetsForCausalLM(PreTrainedModel, GenerationMixin):
    """``self.lm`` is the :class:`memnets.LM` built from ``config.memnets``; its state dict, under
    ``lm.``, is the model's."""

    config_class = MemnetsConfig
    base_model_prefix = "lm"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    # head -> embedding, applied only when config.tie_word_embeddings (memnets' tie_embeddings)
    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm.head.weight": "lm.embed.weight"}

    def __init__(self, config: MemnetsConfig) -> None:
        super().__init__(config)
        # transformers builds models on the meta device before loading weights, which leaves
        # non-persistent buffers (rotary frequencies, feature-map constants: not in the weights file)
        # without values; build them for real here and keep a copy that _init_weights puts back.
        real = torch.device("cpu") if torch.empty(0).device.type == "meta" else torch.empty(0).device
        with real:
            self.lm = LM(config.model_config())
        for module in self.lm.modules():
            fixed = {
                name: buf.detach().clone()
                for name, buf in module.named_buffers(recurse=False)
                if name in module._non_persistent_buffers_set
            }
            if fixed:
                module._memnets_fixed_buffers = fixed
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Parameters come from the weights file, never from here (the LM initialised itself when
        built); only the non-persistent buffers are restored (see ``__init__``)."""
        for name, value in getattr(module, "_memnets_fixed_buffers", {}).items():
            getattr(module, name).copy_(value)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a MemnetsState, passed as ``state``

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained``, strict: a weight missing from the file, or one the model
        does not have, is an error (transformers would only warn and leave random values)."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        bad = {k: v for k, v in bad.items() if v}
        if bad:
            raise ValueError(f"{args[0] if args else ''}: the weights do not match the model: {bad}")
        return (model, info) if want_info else model

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.head

    # -- forward -------------------------------------------------------------------------------------

    def _run(self, ids: Tensor, layers: list[Any] | None, position: int) -> tuple[Tensor, list[Any]]:
        """Logits ``[B, T, V]`` and the states after ``ids``: the parallel forward from scratch or from
        ``layers``, or one recurrent ``LM.step`` for a single token."""
        if layers is None:
            return self.lm(ids, return_states=True)
        if ids.shape[1] == 1:
            logits, layers = self.lm.step(ids[:, 0], layers, position)
            return logits[:, None], layers
        return self.lm(ids, states=layers, return_states=True, start_pos=position)

    def _continue(self, state: MemnetsState, ids: Tensor) -> tuple[Tensor, MemnetsState]:
        n = ids.shape[1]
        if state.rows is None:
            logits, layers = self._run(ids, state.layers, state.position)
            return logits, MemnetsState(state.columns + n, layers, state.position + n)
        outs, rows = [], []
        for i, row in enumerate(state.rows):
            logits, row = self._continue(row, ids[i : i + 1])
            outs.append(logits)
            rows.append(row)
        return torch.cat(outs), MemnetsState(state.columns + n, rows=rows)

    def _prefill_rows(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, MemnetsState]:
        """A left-padded batch, row by row on the real tokens (see the module docstring)."""
        T = ids.shape[1]
        outs, rows = [], []
        for i, n in enumerate(mask.sum(1).tolist()):
            if n == 0:
                raise ValueError(f"attention_mask row {i} masks every token; each row needs one token")
            logits, layers = self._run(ids[i : i + 1, T - n :], None, 0)
            outs.append(F.pad(logits, (0, 0, T - n, 0)))
            rows.append(MemnetsState(n, layers, n))
        return torch.cat(outs), MemnetsState(T, rows=rows)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        state: MemnetsState | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
    ) -> MemnetsCausalLMOutput | tuple:
        """``input_ids [B, T]`` -> logits ``[B, T, V]``; with ``state`` (from an earlier call) the ids
        continue that sequence. ``use_cache``: return the state after ``input_ids`` (always done when
        continuing from one). ``labels``: next-token loss (shifted here; ``-100`` is ignored)."""
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be [B, T], got {None if input_ids is None else input_ids.shape}"
            )
        if state is not None:
            logits, new_state = self._continue(state, input_ids)
        else:
            side = _padding_side(attention_mask) if attention_mask is not None else None
            if side == "left":
                logits, new_state = self._prefill_rows(input_ids, attention_mask)
            elif side == "right" and use_cache:
                raise ValueError(
                    "use_cache with a right-padded attention_mask: the state would contain the pad "
                    "tokens; pad on the left (tokenizer.padding_side = 'left') to generate"
                )
            else:
                logits, layers = self._run(input_ids, None, 0)
                n = input_ids.shape[1]
                new_state = MemnetsState(n, layers, n)
            if not use_cache:
                new_state = None
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        out = MemnetsCausalLMOutput(loss=loss, logits=logits, state=new_state)
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if use_dict else out.to_tuple()

    # -- generation ----------------------------------------------------------------------------------

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        state: MemnetsState | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The columns the state has not consumed yet (all of them at the first call). The other
        keyword arguments ``generate`` passes (cache positions, sequence lengths) describe a KV cache and
        do not apply."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("MemnetsForCausalLM.generate takes input_ids, not inputs_embeds")
        if state is not None:
            input_ids = input_ids[:, state.columns :]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "state": state,
            "use_cache": use_cache,
        }

    def _update_model_kwargs_for_generation(
        self, outputs: ModelOutput, model_kwargs: dict[str, Any], *args, **kwargs
    ):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["state"] = outputs.state
        return model_kwargs

    def generate(self, *args: Any, **kwargs: Any):
        config = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams") or config.num_beams or 1
        if beams > 1:
            raise NotImplementedError(
                f"num_beams={beams}: beam search would reorder the recurrent states along the batch, "
                "which memnets mixers do not support; use greedy or sampling"
            )
        return super().generate(*args, **kwargs)
