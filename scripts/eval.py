"""Evaluate a trained run: text metrics, MQAR recall by number of key-value pairs, needle in a haystack.

    python scripts/eval.py runs/attention-tiny                      # val loss / perplexity / bits per byte
    python scripts/eval.py runs/attention-tiny --data other.txt     # the same on another file (all of it)
    python scripts/eval.py runs/attention --kv-pairs 4,8,16 --seq-len 128
    python scripts/eval.py runs/attention --needle-lengths 64,128,256 --out eval.json
    python scripts/eval.py runs/titans-lm --lm-eval wikitext,lambada_openai,piqa   # lm-evaluation-harness

Text metrics cover the whole validation split (or ``--data`` file) unless ``--max-batches`` caps them;
the output says how many windows and batches, and whether they are the windows of the training log's
``val_loss`` / ``val_bpb`` (``train.eval_batches`` batches of ``train.batch_size``): only then do the two
figures agree. Text runs get text metrics, MQAR runs get MQAR accuracy (by default at their training pairs and length);
``--needle-lengths`` adds the needle test for either. ``--out FILE.json`` writes every result and a PNG
beside it (``--plot`` to choose its path) with accuracy against key-value pairs and context length.

MQAR: test sets come from :func:`memnets.data.mqar.generate_mqar` with the run's vocabulary and options
and seeds in the test range (never seen in training). Beside each accuracy is the recurrent state per
layer (``mixer.state_size(seq_len)`` where the mixer defines it; the KV cache for attention) and its sum
(``LM.state_size``): the recall-vs-state-size view.

Needle in a haystack (synthetic, exact recall). A key-value "needle" is placed at a depth drawn
uniformly from the filler, and the key is repeated as the query at the very end of a context of exactly
``L`` tokens; the answer counts only if every value token is the model's argmax (teacher forced, which
equals greedy decoding of the whole answer). Accuracy is reported per length and per quarter of depth
(the fraction of the filler before the needle: 0% = start of the context, 100% = just before the query). The pieces follow the run's vocabulary:

* MQAR runs: key one token from ``[1, V/2)``, value one token from ``[V/2, V)`` as in MQAR; the filler
  is random tokens other than the key and value (0s when the run trained with
  ``random_non_queries=false``). This is single-pair MQAR with the query gap growing with ``L``.
* text runs: needle ``" The pass key is NNNNN. "`` (five random digits) inside filler made of random
  common English words, query ``" The pass key is"`` at the end, answer ``" NNNNN"``; tokenized with
  the run's tokenizer (byte-level: one token per byte), pieces tokenized separately so the answer
  tokens are the same in the needle and after the query.

Lengths beyond a model's learned absolute positions (``model.max_position_embeddings``) are skipped
with a note in the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from memnets.checkpoint import open_run
from memnets.data.mqar import IGNORE, TEST_SEED_OFFSET, accuracy_by_pairs, generate_mqar
from memnets.data.text import TextTask, build_tokenizer

_FILLER_TEXT = (
    "the of and to in is it that was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two more "
    "write go see number no way could people my than first water been call who oil its now find long down "
    "day did get come made may part over new sound take only little work know place year live me back"
)
NEEDLE_WORDS = _FILLER_TEXT.split()  # common English words for the text haystack
DEPTH_BINS = ("0-25%", "25-50%", "50-75%", "75-100%")


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _max_len(cfg) -> int | None:
    """The longest context the model accepts (learned absolute positions), or None if unbounded."""
    return cfg.model.max_position_embeddings or None


# ----------------------------------------------------------------------------------------------------
# text


@torch.no_grad()
def text_metrics(
    model, stream, seq_len: int, bytes_per_token: float, batch_size: int, max_batches: int | None
):
    """Mean next-token loss over non-overlapping windows tiled from the start of ``stream``."""
    n = (len(stream) - 1) // seq_len
    if max_batches is not None:
        n = min(n, batch_size * max_batches)
    if n < 1:
        raise ValueError(f"the text has {len(stream)} tokens: too few for one window of --seq-len {seq_len}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        starts = np.arange(i, min(n, i + batch_size)) * seq_len
        rows = torch.from_numpy(
            np.stack([np.asarray(stream[s : s + seq_len + 1], dtype=np.int64) for s in starts])
        )
        ids, labels = rows[:, :-1].to(device), rows[:, 1:].to(device)
        logits = model(ids).float()
        total += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
        count += labels.numel()
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": loss / math.log(2) / bytes_per_token,
        "tokens": count,
        "seq_len": seq_len,
        "windows": n,
        "batches": -(-n // batch_size),
        "batch_size": batch_size,
    }


def run_text(cfg, model, args) -> dict[str, Any]:
    seq_len = args.seq_len or cfg.data.seq_len
    if args.data:
        # the whole file is the evaluation set
        task = TextTask(
            dataclasses.replace(cfg.data.text, val_fraction=0.0), args.data, seq_len, cfg.run.seed
        )
        stream, source, split = task.train, args.data, "file"
    else:
        if cfg.data.text.val_fraction == 0:
            raise ValueError("the run has no validation split (data.text.val_fraction=0); pass --data FILE")
        task = TextTask(cfg.data.text, cfg.data.path, seq_len, cfg.run.seed)
        stream, source, split = task.val, f"{cfg.data.path} (validation split)", "validation"
    if task.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"--data {source}: tokenizer vocabulary {task.vocab_size} exceeds the model's")
    out = text_metrics(model, stream, seq_len, task.bytes_per_token, args.batch_size, args.max_batches)
    # the windows the training log's val_loss / val_bpb covered (Trainer.evaluate: train.eval_batches
    # batches of train.batch_size windows from the start of the validation split)
    t = cfg.train
    trained = (
        min((len(task.val) - 1) // cfg.data.seq_len, t.batch_size * t.eval_batches)
        if split == "validation"
        else None
    )
    available = (len(stream) - 1) // seq_len
    return {
        "source": source,
        "split": split,
        **out,
        "available_windows": available,
        "training_eval_windows": trained,
    }


def coverage(text: dict[str, Any], max_batches: int | None) -> str:
    """Which windows of which split the text metrics cover."""
    where = "file" if text["split"] == "file" else "validation split"
    head = (
        f"evaluated {text['windows']} windows of {text['seq_len']} tokens in {text['batches']} batches "
        f"of {text['batch_size']}"
    )
    if text["windows"] == text["available_windows"]:
        return f"{head}: all of the {where}"
    return f"{head}: the first {text['windows']} of the {where}'s {text['available_windows']} (--max-batches {max_batches})"


def training_log_note(cfg, text: dict[str, Any]) -> str:
    """How this evaluation relates to the val_loss / val_bpb in the run's metrics.jsonl."""
    t = cfg.train
    if text["split"] == "file":
        return "--data: the whole file, not the validation split the training log's val_loss / val_bpb use"
    if text["seq_len"] != cfg.data.seq_len:
        return (
            f"windows of {text['seq_len']} tokens, the run trained and evaluated at data.seq_len="
            f"{cfg.data.seq_len}: not comparable with the training log's val_loss / val_bpb"
        )
    covered = (
        f"the training log's val_loss / val_bpb cover the first {text['training_eval_windows']} windows "
        f"(train.eval_batches={t.eval_batches} x train.batch_size={t.batch_size})"
    )
    if text["windows"] == text["training_eval_windows"]:
        return f"{covered}: the same windows, so the figures agree for the same weights"
    return f"{covered}; this evaluation covers {text['windows']}, so the figures differ"


# ----------------------------------------------------------------------------------------------------
# MQAR


def layer_state_sizes(model, seq_len: int) -> list[dict[str, Any]]:
    return [
        {
            "layer": i,
            "mixer": block.mixer_name,
            "state_size": block.mixer.state_size(seq_len) if hasattr(block.mixer, "state_size") else None,
        }
        for i, block in enumerate(model.blocks)
    ]


@torch.no_grad()
def run_mqar(cfg, model, args) -> dict[str, Any]:
    m = cfg.data.mqar
    seq_len = args.seq_len or cfg.data.seq_len
    limit = _max_len(cfg)
    if limit is not None and seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} exceeds model.max_position_embeddings={limit}")
    device = next(model.parameters()).device
    results = []
    for n in args.kv_pairs or m.num_kv_pairs:
        test = generate_mqar(
            args.num_test, seq_len, n, m.vocab_size, TEST_SEED_OFFSET + n, m.power_a, m.random_non_queries
        )
        preds, loss_sum = [], 0.0
        for i in range(0, args.num_test, args.batch_size):
            logits = model(test.input_ids[i : i + args.batch_size].to(device)).float()
            labels = test.labels[i : i + args.batch_size].to(device)
            loss_sum += F.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
            ).item()
            preds.append(logits.argmax(-1).cpu())
        acc = accuracy_by_pairs(torch.cat(preds), test.labels, test.num_kv_pairs)["accuracy"]
        queries = int((test.labels != IGNORE).sum())
        results.append({"kv_pairs": n, "accuracy": acc, "loss": loss_sum / queries, "queries": queries})
    layers = layer_state_sizes(model, seq_len)
    return {
        "seq_len": seq_len,
        "num_test": args.num_test,
        "by_kv_pairs": results,
        "state_size_per_layer": layers,
        "state_size": model.state_size(seq_len),
    }


# ----------------------------------------------------------------------------------------------------
# needle in a haystack


def _needle_example(cfg, tokenizer, length: int, rng: np.random.Generator) -> tuple[list[int], int, float]:
    """One context of ``length`` tokens ending in query + answer; returns (ids, answer length, depth as
    the fraction of the filler placed before the needle)."""
    if cfg.data.kind == "mqar":
        v = cfg.data.mqar.vocab_size
        key, value = int(rng.integers(1, v // 2)), int(rng.integers(v // 2, v))
        needle, query, answer = [key, value], [key], [value]
        n_fill = length - 4
        if cfg.data.mqar.random_non_queries:
            filler = rng.integers(1, v, size=max(n_fill, 0))
            filler[(filler == key) | (filler == value)] = 0
            filler = filler.tolist()
        else:
            filler = [0] * max(n_fill, 0)
    else:
        digits = "".join(str(d) for d in rng.integers(0, 10, size=5))
        query = tokenizer.encode(" The pass key is")
        answer = tokenizer.encode(f" {digits}")
        needle = query + answer + tokenizer.encode(". ")
        n_fill = length - len(needle) - len(query) - len(answer)
        filler = []
        while len(filler) < n_fill:
            filler += tokenizer.encode(" " + " ".join(rng.choice(NEEDLE_WORDS, size=64)))
        filler = filler[: max(n_fill, 0)]
    if n_fill < 0:
        raise ValueError(f"--needle-lengths: {length} is too short for the needle and its query")
    depth = int(rng.integers(0, n_fill + 1))
    ids = filler[:depth] + needle + filler[depth:] + query + answer
    return ids, len(answer), depth / n_fill if n_fill else 0.0


@torch.no_grad()
def run_needle(cfg, model, args) -> dict[str, Any]:
    tokenizer = build_tokenizer(cfg.data.text.tokenizer) if cfg.data.kind == "text" else None
    device = next(model.parameters()).device
    limit = _max_len(cfg)
    results = []
    for length in args.needle_lengths:
        if limit is not None and length > limit:
            results.append(
                {
                    "length": length,
                    "accuracy": None,
                    "skipped": f"beyond model.max_position_embeddings={limit}",
                }
            )
            continue
        rng = np.random.default_rng([args.seed, length])
        examples = [_needle_example(cfg, tokenizer, length, rng) for _ in range(args.needle_samples)]
        by_answer: dict[int, list[int]] = {}  # answer length -> example indices (batched together)
        for j, (_, n_answer, _) in enumerate(examples):
            by_answer.setdefault(n_answer, []).append(j)
        correct = [False] * len(examples)
        for n_answer, index in by_answer.items():
            for i in range(0, len(index), args.batch_size):
                chunk = index[i : i + args.batch_size]
                ids = torch.tensor([examples[j][0] for j in chunk], device=device)
                pred = model(ids)[:, -n_answer - 1 : -1].argmax(-1)
                for j, ok in zip(chunk, (pred == ids[:, -n_answer:]).all(-1).tolist()):
                    correct[j] = ok
        by_depth = {}
        for q, name in enumerate(DEPTH_BINS):
            hits = [c for c, (_, _, d) in zip(correct, examples) if min(int(d * 4), 3) == q]
            by_depth[name] = sum(hits) / len(hits) if hits else None
        results.append(
            {
                "length": length,
                "accuracy": sum(correct) / len(examples),
                "samples": len(examples),
                "accuracy_by_depth": by_depth,
            }
        )
    return {"kind": cfg.data.kind, "by_length": results}


# ----------------------------------------------------------------------------------------------------
# output


def plot(results: dict[str, Any], path: Path, title: str) -> bool:
    """Accuracy vs key-value pairs (MQAR) and vs context length (needle); False when there is nothing."""
    panels = []
    if "mqar" in results:
        rows = results["mqar"]["by_kv_pairs"]
        panels.append(
            ("key-value pairs", [r["kv_pairs"] for r in rows], [r["accuracy"] for r in rows], "MQAR")
        )
    if "needle" in results:
        rows = [r for r in results["needle"]["by_length"] if r["accuracy"] is not None]
        panels.append(
            ("context length", [r["length"] for r in rows], [r["accuracy"] for r in rows], "needle")
        )
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (xlabel, xs, ys, name) in zip(axes[0], panels):
        ax.plot(xs, ys, marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (config.yaml and model.safetensors or checkpoints/)")
    p.add_argument(
        "--data", help="text runs: evaluate on this file (all of it) instead of the validation split"
    )
    p.add_argument("--seq-len", type=int, default=None, help="window (text) or sequence (MQAR) length")
    p.add_argument("--max-batches", type=int, default=None, help="text: cap on evaluated batches")
    p.add_argument("--kv-pairs", type=_ints, default=None, help="MQAR: e.g. 4,8,16 (default: the run's)")
    p.add_argument("--num-test", type=int, default=256, help="MQAR: examples per number of pairs")
    p.add_argument(
        "--needle-lengths", type=_ints, default=None, help="needle test context lengths, e.g. 64,128"
    )
    p.add_argument("--needle-samples", type=int, default=32, help="needle examples per length")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="write the results as JSON here (and a PNG beside it)")
    p.add_argument("--plot", type=Path, help="PNG path (default: --out with .png)")
    p.add_argument(
        "--lm-eval",
        metavar="TASKS",
        help="instead of the above: lm-evaluation-harness tasks (comma-separated) on the run exported to "
        "RUN/hf (newest checkpoint); results to --out or RUN/lm_eval.json (needs memnets[eval])",
    )
    p.add_argument("--lm-eval-include", type=Path, help="folder of extra lm-eval task YAMLs")
    p.add_argument(
        "--lm-eval-limit", type=int, default=None, help="lm-eval: documents per task (a smoke test)"
    )
    p.add_argument("--lm-eval-samples", action="store_true", help="lm-eval: keep per-document results")
    args = p.parse_args(argv)
    for name in ("num_test", "needle_samples", "batch_size", "max_batches", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lm_eval:
        from memnets.hf.harness import evaluate_run

        try:
            evaluate_run(
                args.run,
                [t.strip() for t in args.lm_eval.split(",") if t.strip()],
                args.out,
                include_path=args.lm_eval_include,
                batch_size=args.batch_size,
                device=args.device,
                limit=args.lm_eval_limit,
                log_samples=args.lm_eval_samples,
            )
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    loaded = open_run(args.run, args.device)
    cfg, model = loaded.config, loaded.model
    print(f"weights: {loaded.source} (step {loaded.step if loaded.step is not None else 'not recorded'})")
    kind = cfg.data.kind
    if args.data and kind != "text":
        p.error(f"--data needs a text run; {args.run} trained on data.kind={kind!r}")
    if args.kv_pairs and kind != "mqar":
        p.error(f"--kv-pairs needs an MQAR run; {args.run} trained on data.kind={kind!r}")

    results: dict[str, Any] = {
        "run": str(args.run),
        "data_kind": kind,
        "mixers": cfg.model.layer_mixers(),
        "num_params": model.num_params(),
        "weights": str(loaded.source),
        "step": loaded.step,
    }
    try:
        if kind == "text":
            results["text"] = run_text(cfg, model, args)
            t = results["text"]
            print(
                f"text {t['source']}: loss {t['loss']:.4f} | perplexity {t['perplexity']:.2f} | "
                f"bits/byte {t['bits_per_byte']:.4f} | {t['tokens']} tokens"
            )
            print(f"  {coverage(t, args.max_batches)}")
            print(f"  {training_log_note(cfg, t)}")
        else:
            results["mqar"] = run_mqar(cfg, model, args)
            q = results["mqar"]
            print(f"MQAR, seq_len {q['seq_len']}, state size {q['state_size']} numbers per sequence")
            for layer in q["state_size_per_layer"]:
                print(f"  layer {layer['layer']} ({layer['mixer']}): state size {layer['state_size']}")
            for r in q["by_kv_pairs"]:
                print(f"  {r['kv_pairs']:>4} pairs: accuracy {r['accuracy']:.4f} | loss {r['loss']:.4f}")
        if args.needle_lengths:
            results["needle"] = run_needle(cfg, model, args)
            print("needle in a haystack (exact recall):")
            for r in results["needle"]["by_length"]:
                if r["accuracy"] is None:
                    print(f"  length {r['length']:>6}: skipped: {r['skipped']}")
                    continue
                depths = " ".join(
                    f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in r["accuracy_by_depth"].items()
                )
                print(f"  length {r['length']:>6}: accuracy {r['accuracy']:.4f} | by depth: {depths}")
    except FileNotFoundError as e:
        print(
            f"error: {e} (paths in config.yaml are relative to where the run started; try --data)",
            file=sys.stderr,
        )
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    png = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if png and plot(results, png, f"{Path(args.run).name} ({', '.join(sorted(set(results['mixers'])))})"):
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
