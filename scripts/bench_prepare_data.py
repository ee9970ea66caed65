"""Throughput and peak memory of ``scripts/prepare_data.py`` on a generated corpus (not a timed test).

    python scripts/bench_prepare_data.py --sizes-mb 50 200 --workers 1 2 --tokenizers byte bpe --tmp /tmp/bench

Writes a JSON-lines corpus of random-word documents (0.2-4 KB each) of each size into ``--tmp`` and runs
the preparation once per (tokenizer, size, workers) in a fresh process, reporting documents/s, tokens/s,
and the peak resident memory of the writing process and of the largest worker (``getrusage``). ``bpe``
is a byte-level BPE tokenizer (``tokenizers``, vocabulary 8192) trained on the first 2 MB. The corpus
and shards stay in ``--tmp``; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RUN = """
import json, resource, sys, time, io
from memnets.data.prepare import PrepareOptions, prepare
opts = PrepareOptions(**json.loads(sys.argv[1]))
t0 = time.perf_counter()
meta = prepare(opts, log=io.StringIO())
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "tokens": meta["tokens"] + meta["val"]["tokens"],
    "documents": meta["documents"] + meta["val"]["documents"], "shards": len(meta["shards"]),
    "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_corpus(path: Path, size_mb: int, seed: int = 0) -> int:
    if path.exists() and path.stat().st_size >= size_mb * 1e6:
        return path.stat().st_size
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(4000)]
    weights = 1 / np.arange(1, len(vocab) + 1)  # Zipf-like word frequencies
    weights /= weights.sum()
    pool = [" ".join(rng.choice(vocab, size=int(rng.integers(40, 700)), p=weights)) for _ in range(4000)]
    written, i = 0, 0
    with open(path, "w") as f:
        while written < size_mb * 1e6:
            line = json.dumps({"text": f"document {i}: {pool[int(rng.integers(len(pool)))]}"}) + "\n"
            f.write(line)
            written += len(line)
            i += 1
    return written


def train_bpe(corpus: Path, out: Path) -> str:
    import tokenizers

    if not out.exists():
        texts = [json.loads(line)["text"] for line in corpus.read_text()[: 2 * 10**6].splitlines()[:-1]]
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=8192,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer)
        tok.save(str(out))
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 200])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokenizers", nargs="+", default=["byte", "bpe"], choices=["byte", "bpe"])
    p.add_argument("--tmp", default="/tmp/memnets-bench-prepare")
    args = p.parse_args()
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    corpora = {mb: tmp / f"corpus_{mb}mb.jsonl" for mb in args.sizes_mb}
    for mb, path in corpora.items():
        make_corpus(path, mb)
    rows = []
    for name in args.tokenizers:
        spec = "byte" if name == "byte" else train_bpe(corpora[min(corpora)], tmp / "bpe8192.json")
        for mb, path in corpora.items():
            for w in args.workers:
                out = tmp / f"out_{name}_{mb}_{w}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                opts = {"inputs": [str(path)], "out": str(out), "tokenizer": spec, "workers": w}
                t0 = time.time()
                res = subprocess.run(
                    [sys.executable, "-c", RUN, json.dumps(opts)], capture_output=True, text=True
                )
                if res.returncode:
                    sys.exit(res.stderr)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r.update(tokenizer=name, size_mb=path.stat().st_size / 1e6, workers=w, wall=time.time() - t0)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {time.strftime('%Y-%m-%d')}")
    print()
    print(
        "| tokenizer | corpus (MB) | workers | documents/s | tokens/s | MB/s | shards | peak RSS main (MB) | peak RSS worker (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tokenizer']} | {r['size_mb']:.0f} | {r['workers']} | {r['documents'] / r['seconds']:,.0f} | "
            f"{r['tokens'] / r['seconds']:,.0f} | {r['size_mb'] / r['seconds']:.1f} | {r['shards']} | "
            f"{r['main_rss_mb']:.0f} | {r['worker_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
