"""Export a trained run as a Hugging Face ``transformers`` model folder (needs ``memnets[hf]``).

    python scripts/export_hf.py runs/titans-lm hf/titans-lm
    python scripts/export_hf.py runs/titans-lm hf/titans-lm --checkpoint runs/titans-lm/checkpoints/step_0001000.pt

Writes ``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer files and the
two modules ``trust_remote_code=True`` loads (they import ``memnets.hf``; memnets must be installed
where the folder is loaded). The weights are the run's newest loadable checkpoint unless
``--checkpoint`` names one; the step exported is printed and kept in ``config.json``
(``memnets_source``). Load it with

    import memnets.hf  # registers the model with the Auto classes
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf/titans-lm")
    tokenizer = AutoTokenizer.from_pretrained("hf/titans-lm")

or, without the import, ``AutoModelForCausalLM.from_pretrained("hf/titans-lm", trust_remote_code=True)``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (config.yaml and checkpoints/ or model.safetensors)")
    p.add_argument("out", help="output folder (created; files of the same names are replaced)")
    p.add_argument(
        "--checkpoint", help="export this .pt checkpoint or .safetensors file instead of the newest"
    )
    args = p.parse_args(argv)

    from memnets.hf import export_run

    try:
        info = export_run(args.run, args.out, checkpoint=args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step = "unknown (not recorded)" if info.step is None else info.step
    tok = info.tokenizer or "none (the run has no text data)"
    print(f"exported {args.run} step {step} (weights {info.weights}, tokenizer {tok}) to {info.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
