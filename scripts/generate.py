"""Decode text from a trained run with the models' recurrent states.

    python scripts/generate.py runs/attention-tiny --prompt "Once upon a time" --max-new-tokens 200
    python scripts/generate.py runs/attention-tiny --temperature 0.8 --top-k 50 --seed 1

The model is rebuilt from the run folder's ``config.yaml`` and weights alone; the tokenizer is the
one the config names (byte-level by default)."""

from __future__ import annotations

import argparse
import sys

import torch

from memnets.checkpoint import open_run
from memnets.data.text import build_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (with config.yaml and model.safetensors or checkpoints/)")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top-k must be >= 1 (or left out for no cut-off), got {args.top_k}")
    if not args.temperature >= 0:
        p.error(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")

    loaded = open_run(args.run, args.device)
    cfg, model = loaded.config, loaded.model
    step = loaded.step if loaded.step is not None else "not recorded"
    print(f"weights: {loaded.source} (step {step})", file=sys.stderr)
    if cfg.data.kind != "text":
        p.error(f"{args.run} was trained on data.kind={cfg.data.kind!r}; generate.py decodes text models")
    tok = build_tokenizer(cfg.data.text.tokenizer)
    ids = torch.tensor([tok.encode(args.prompt)], device=args.device)
    if ids.shape[1] == 0:
        p.error("--prompt must not be empty")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = model.generate(
        ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, generator=gen
    )
    print(tok.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
