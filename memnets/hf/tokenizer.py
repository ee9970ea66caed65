"""The run's tokenizer as a ``transformers`` fast tokenizer (what ``AutoTokenizer`` and
lm-evaluation-harness load).

* ``byte`` (memnets' default: token = UTF-8 byte, EOS = 256): a ``tokenizers`` byte-level BPE with the
  256 byte symbols as ids 0..255, no merges, and ``<|endoftext|>`` as id 256. The byte-level
  pre-tokenizer turns each byte into one printable symbol (the GPT-2 byte-to-unicode table, written out
  below), so encoding gives the bytes themselves. One difference from ``ByteTokenizer``: the text
  ``<|endoftext|>`` is read as the EOS token (as every Hugging Face tokenizer does with its specials).
* a ``tokenizer.json`` path or hub name: that tokenizer, with memnets' EOS (an ``<|endoftext|>`` token
  appended when it had none, as ``memnets.data.text.HFTokenizer`` counts it)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from ..data.text import BYTE_EOS, HFTokenizer, build_tokenizer

EOS_TEXT = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """Symbol of byte ``b`` at index ``b``: printable Latin-1 bytes stand for themselves, the others
    (controls, space, 0x7f-0xa0, 0xad) take the code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _byte_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {s: b for b, s in enumerate(byte_symbols())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS_TEXT, special=True)])
    if tok.token_to_id(EOS_TEXT) != BYTE_EOS:
        raise RuntimeError(f"byte tokenizer: EOS got id {tok.token_to_id(EOS_TEXT)}, expected {BYTE_EOS}")
    return tok, EOS_TEXT


def _named_tokenizer(name: str):
    from tokenizers import AddedToken

    run_tok = build_tokenizer(name)
    assert isinstance(run_tok, HFTokenizer)
    tok = run_tok.tok
    eos = tok.id_to_token(run_tok.eos_id)
    if eos is None:  # HFTokenizer counts an EOS one past the vocabulary: make it a real token
        tok.add_special_tokens([AddedToken(EOS_TEXT, special=True)])
        eos = EOS_TEXT
    if tok.token_to_id(eos) != run_tok.eos_id:
        raise RuntimeError(
            f"tokenizer {name!r}: EOS {eos!r} has id {tok.token_to_id(eos)}, memnets uses {run_tok.eos_id}"
        )
    return tok, eos


def build_hf_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer for memnets tokenizer ``name`` (``data.text.tokenizer``); the pad
    token is EOS (padded positions are masked, their id does not matter)."""
    tok, eos = _byte_tokenizer() if name == "byte" else _named_tokenizer(name)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=eos,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: the model takes none
    )
