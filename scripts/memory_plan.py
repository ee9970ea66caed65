"""Will a config's training step fit on a GPU? Activation memory counted on the CPU, and the settings that fit.

For each LM config, the tensors autograd keeps for the backward are counted (``benchmarks.timing
.saved_for_backward_mb``: every saved storage once, float32, batch 1) for one and two layers of each of
its mixers at its real widths, at two lengths a few chunks apart, with and without
``train.memory_recompute``; the differences give megabytes per token and layer (the mixer's block:
norms, projections, the memory's chunk steps) and per token outside the layers (embedding, logits,
loss), so parameters and per-call constants cancel. From those, the peak of one training step at the
config's micro-batch (``train.micro_batch_size`` x ``data.seq_len`` tokens):

* weights, gradients and AdamW's two moments in float32: 16 bytes per parameter;
* without ``train.activation_checkpointing``: every layer's saved tensors, plus the part outside them;
* with it: each layer keeps only its input (d_model floats per token) until the backward re-runs it, so
  one layer's saved tensors at a time (the largest), plus every layer's input and the part outside.

The plan is the first setting, in this order, whose estimate fits ``--gpu-gb`` with ``--margin``: as
configured, then with activation checkpointing, then with the memories' chunk steps recomputed too,
then the micro-batch halved (the batch stays: more accumulation steps) until it fits. An estimate, not
a measurement: on a GPU under bf16 autocast the matmuls' saved inputs are half the size counted here
(an upper bound for them), the memories' float32 state is not, and the CUDA allocator's fragmentation
and the compiled engine's own choices are not modelled.

    python scripts/memory_plan.py --configs configs/lm/titans-760m.yaml configs/lm/atlas-760m.yaml
    python scripts/memory_plan.py --configs configs/lm/*-760m*.yaml --gpu-gb 80 --out plans

Writes ``memory_plan.json`` and ``.md`` with ``--out``. CPU, backend chunked (what ``auto`` runs on a
GPU for the deep memories at these widths is the compiled form of the same engine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import saved_for_backward_mb  # noqa: E402
from memnets import LM  # noqa: E402
from memnets.config import apply_overrides, config_from_dict, load_config, load_yaml  # noqa: E402
from memnets.data import build_task  # noqa: E402
from memnets.reports import report  # noqa: E402


def layers_model(config: Path, overrides: list[str], mixer: str, layers: int) -> LM:
    """The config's model with ``layers`` layers of ``mixer`` (a hybrid's other mixers' options dropped)."""
    data = apply_overrides(
        load_yaml(config), [*overrides, f"model.mixer={mixer}", f"model.n_layers={layers}"]
    )
    options = data["model"].get("mixer_options") or {}
    data["model"]["mixer_options"] = {k: v for k, v in options.items() if k == mixer}
    torch.manual_seed(0)
    return LM(config_from_dict(data).model).train()


def saved_mb(model: LM, T: int, recompute: bool) -> float:
    """MB autograd keeps for the backward of one sequence of ``T`` tokens through ``model`` (the loss
    included; parameters excluded)."""
    model.recompute_memory_chunks = recompute
    # the same tokens for every model and mode at a length: what some memories save depends on the data
    tokens = torch.randint(
        0, model.embed.num_embeddings, (1, T + 1), generator=torch.Generator().manual_seed(0)
    )

    def forward() -> torch.Tensor:
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    return saved_for_backward_mb(forward, exclude=list(model.parameters()))


def per_token(config: Path, overrides: list[str], mixer: str, lengths: tuple[int, int]) -> dict[str, float]:
    """MB per token and layer of ``mixer`` (plain and with the chunk steps recomputed), MB per token
    outside the layers, and the parameters of one layer and outside them, from one and two layers at
    two lengths."""
    T1, T2 = lengths
    models = {n: layers_model(config, overrides, mixer, n) for n in (1, 2)}
    out: dict[str, float] = {}
    for recompute in (False, True):
        s = {(n, T): saved_mb(models[n], T, recompute) for n in (1, 2) for T in lengths}
        layer = ((s[2, T2] - s[1, T2]) - (s[2, T1] - s[1, T1])) / (T2 - T1)
        out["layer_recomputed" if recompute else "layer"] = layer
        if not recompute:
            out["outside"] = (s[1, T2] - s[1, T1]) / (T2 - T1) - layer
    params = {n: model.num_params() for n, model in models.items()}
    out["layer_params"] = params[2] - params[1]
    out["outside_params"] = params[1] - out["layer_params"]
    return out


def peak_gb(
    params: int, layers: list[float], outside: float, d_model: int, tokens: int, checkpoint: bool
) -> float:
    """Estimated peak of a training step (GB): 16 B per parameter, the activations of ``tokens``."""
    if checkpoint:
        acts = max(layers) + len(layers) * d_model * 4 / 1e6 + outside
    else:
        acts = sum(layers) + outside
    return (16 * params + acts * 1e6 * tokens) / 1e9


def plan(
    config: Path, overrides: list[str], gpu_gb: float, margin: float, lengths: tuple[int, int]
) -> dict[str, Any]:
    raw = apply_overrides(load_yaml(config), overrides)
    text, model = raw.get("data") or {}, raw.get("model") or {}
    if text.get("kind") == "text" and not text.get("path") and model.get("vocab_size"):
        overrides = [*overrides, "data.path=unread"]  # with the vocabulary given, the plan reads no data
    cfg = load_config(config, overrides)
    if cfg.model.vocab_size is None:  # the trainer takes it from the data; so does the plan
        overrides = [*overrides, f"model.vocab_size={build_task(cfg.data, cfg.run.seed).vocab_size}"]
        cfg = load_config(config, overrides)
    m, t = cfg.model, cfg.train
    mixers = m.layer_mixers()
    counts = {name: per_token(config, overrides, name, lengths) for name in dict.fromkeys(mixers)}
    # the whole model's parameters from the one- and two-layer ones (the 760M configs' would be 3 GB)
    params = int(counts[mixers[0]]["outside_params"] + sum(counts[n]["layer_params"] for n in mixers))
    micro = t.micro_batch_size or t.batch_size
    outside = max(c["outside"] for c in counts.values())

    def estimate(checkpoint: bool, recompute: bool, mb: int) -> float:
        layers = [counts[n]["layer_recomputed" if recompute else "layer"] for n in mixers]
        return peak_gb(params, layers, outside, m.d_model, mb * cfg.data.seq_len, checkpoint)

    settings = [(t.activation_checkpointing, t.memory_recompute, micro), (True, t.memory_recompute, micro)]
    settings.append((True, True, micro))
    mb = micro
    while mb > 1:
        mb //= 2
        settings.append((True, True, mb))
    rows = [
        {"activation_checkpointing": c, "memory_recompute": r, "micro_batch_size": b, "gb": estimate(c, r, b)}
        for c, r, b in settings
    ]
    fits = next((r for r in rows if r["gb"] <= margin * gpu_gb), None)
    return {
        "config": config.stem,
        "params": params,
        "tokens": micro * cfg.data.seq_len,
        "mb_per_token": counts,
        "settings": rows,
        "plan": fits,
    }


def _setting(r: dict[str, Any] | None) -> str:
    if r is None:
        return "none fits"
    on = [k for k in ("activation_checkpointing", "memory_recompute") if r[k]]
    return f"{' + '.join(on) or 'as is'}, micro-batch {r['micro_batch_size']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", type=Path, required=True)
    p.add_argument("--override", nargs="*", default=[], help="dotted config overrides for every config")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="the GPU's memory (80: an H100)")
    p.add_argument("--margin", type=float, default=0.9, help="the share of it a plan may use")
    p.add_argument("--lengths", nargs=2, type=int, default=[64, 128], help="two lengths, chunks apart")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    rows = []
    for config in a.configs:
        r = plan(config, a.override, a.gpu_gb, a.margin, tuple(a.lengths))
        rows.append(r)
        first = r["settings"][0]
        print(f"{r['config']}: {first['gb']:.1f} GB as configured; plan: {_setting(r['plan'])}", flush=True)
    lines = [
        "| config | MB/token/layer (recomputed) | as configured (GB) | + activation checkpointing | + memory recompute | "
        f"plan for {a.gpu_gb:g} GB | its estimate (GB) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        per = ", ".join(
            f"{n} {c['layer']:.2f} ({c['layer_recomputed']:.2f})" for n, c in r["mb_per_token"].items()
        )
        gb = [s["gb"] for s in r["settings"][:3]]
        est = f"{r['plan']['gb']:.1f}" if r["plan"] else "-"
        lines.append(
            f"| {r['config']} | {per} | {gb[0]:.1f} | {gb[1]:.1f} | {gb[2]:.1f} | {_setting(r['plan'])} | {est} |"
        )
    title = f"estimated training-step peak at each config's micro-batch (float32 counts, {a.gpu_gb:g} GB GPU)"
    report(a.out, "memory_plan", title, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
