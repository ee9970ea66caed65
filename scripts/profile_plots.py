"""The PNGs of ``scripts/profile_chunks.py``, drawn to be read at thumbnail size: large type, plain tick
labels (chunk sizes and lengths as 16, 32, 64; times as 40 ms, never 2^4 or 4x10^1), one colour per
target, and a line style and marker per length (or chunk size) named in the legend.

- ``time_vs_chunk.png``: fwd+bwd time (median, bars p20-p80) against the chunk size, per length;
- ``tokens_vs_seqlen.png``: fwd+bwd tokens/s against the length, per chunk size;
- ``loss_vs_chunk.png``: the trained quality against the chunk size (mean, bars one standard deviation
  over seeds), with each target's context-free level dashed;
- ``speed_vs_quality.png``: the trade-off, one point per chunk size at (training tokens/s, quality).

Settings that have not left the context-free level are drawn hollow, with a note under the plot.
Needs matplotlib (extra ``memnets[plot]``).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.env import title

STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]
RC = {"font.size": 13, "axes.titlesize": 14, "legend.fontsize": 11}


def plain(value: float, _pos: Any = None) -> str:
    """Tick labels without offsets or powers: 0.5, 16, 40, 1.2k, 3.4M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the profile plots need matplotlib: pip install 'memnets[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticks_at(axis: Any, values: list[float]) -> None:
    """Ticks exactly at ``values`` (the chunk sizes or lengths swept), labelled plainly."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.set_major_locator(FixedLocator(sorted(set(values))))
    axis.set_major_formatter(FuncFormatter(plain))
    axis.set_minor_locator(NullLocator())


def _plain_log(ax: Any, which: str) -> None:
    """A log axis labelled plainly: the decades, plus 2x and 5x when the data spans under two decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    ax.autoscale_view()
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    axis.set_major_formatter(FuncFormatter(plain))
    narrow = lo > 0 and math.log10(hi / lo) < 2
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0) if narrow else (2.0, 3.0, 5.0, 7.0)))
    axis.set_minor_formatter(FuncFormatter(plain) if narrow else NullFormatter())


def _name(target: str) -> str:
    return Path(target).stem


def _option_label(option: str) -> str:
    return "chunk size" if option == "chunk_size" else option


def _save(plt: Any, fig: Any, ax: Any, heading: str, env_line: str, path: Path, note: str = "") -> Path:
    ax.set_title(heading)
    ax.grid(True, which="both", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + (len(handles) - 1) // 14)
    lines = [env_line, *textwrap.wrap(note, 125)]
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=9, color="dimgray", va="bottom")
    fig.tight_layout(rect=(0, 0.01 + 0.03 * len(lines), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def quality_metric(quality: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(metric key, its context-free level's key, axis title): bits per byte when every trained setting
    has it (text), else the validation loss."""
    done = [q for q in quality if q.get("val_loss") is not None]
    if done and all(q.get("val_bpb") is not None for q in done):
        return "val_bpb", "chance_bpb", "validation bits per byte (lower is better)"
    return "val_loss", "chance_loss", "validation loss, nats/token (lower is better)"


def plot(
    rows: list[dict[str, Any]], quality: list[dict[str, Any]], env: dict[str, Any], out: Path
) -> list[Path]:
    """Every PNG that has data; the paths written."""
    plt = _pyplot()
    env_line = f"{title(env)} | {env.get('dtype', '')}"
    option = env.get("chunk_option", "chunk_size")
    targets = list(dict.fromkeys([*(r["target"] for r in rows), *(q["target"] for q in quality)]))
    cmap = plt.get_cmap("tab20" if len(targets) > 10 else "tab10")
    color = {t: cmap(i % cmap.N) for i, t in enumerate(targets)}
    files = []
    with plt.rc_context(RC):
        timed = [r for r in rows if r.get("fwdbwd_ms") is not None]
        if timed:
            files.append(_time_vs_chunk(plt, timed, color, option, env_line, out / "time_vs_chunk.png"))
            files.append(_tokens_vs_seqlen(plt, timed, color, env_line, out / "tokens_vs_seqlen.png"))
        trained = [q for q in quality if q.get("val_loss") is not None]
        if trained:
            files.append(_loss_vs_chunk(plt, trained, color, option, env_line, out / "loss_vs_chunk.png"))
            fast = [q for q in trained if q.get("train_tokens_per_s") is not None]
            if fast:
                files.append(_speed_vs_quality(plt, fast, color, env_line, out / "speed_vs_quality.png"))
    return files


def _time_vs_chunk(plt: Any, rows: list[dict], color: dict, option: str, env_line: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    seq_lens = sorted({r["seq_len"] for r in rows})
    for t in color:
        for i, T in enumerate(seq_lens):
            sel = sorted(
                (r for r in rows if r["target"] == t and r["seq_len"] == T and r["chunk_size"]),
                key=lambda r: r["chunk_size"],
            )
            style = {"color": color[t], "ls": STYLES[i % len(STYLES)], "marker": MARKERS[i % len(MARKERS)]}
            if sel:
                ms = [r["fwdbwd_ms"] for r in sel]
                spread = [
                    [m - (r.get("fwdbwd_p20_ms") or m) for m, r in zip(ms, sel)],
                    [(r.get("fwdbwd_p80_ms") or m) - m for m, r in zip(ms, sel)],
                ]
                xs, label = [r["chunk_size"] for r in sel], f"{_name(t)}, T = {T}"
                ax.errorbar(xs, ms, yerr=spread, capsize=3, lw=2, ms=7, label=label, **style)
            flat = [
                r["fwdbwd_ms"] for r in rows if r["target"] == t and r["seq_len"] == T and not r["chunk_size"]
            ]
            if flat:
                ax.axhline(
                    flat[0],
                    lw=1.5,
                    color=color[t],
                    ls=style["ls"],
                    label=f"{_name(t)}, T = {T} (no {_option_label(option)})",
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    chunks = [r["chunk_size"] for r in rows if r["chunk_size"]]
    if chunks:
        _ticks_at(ax.xaxis, chunks)
    _plain_log(ax, "y")
    ax.set(xlabel=f"{_option_label(option)} (tokens)", ylabel="fwd+bwd time (ms, median; bars p20-p80)")
    return _save(plt, fig, ax, f"fwd+bwd time vs {_option_label(option)}", env_line, path)


def _tokens_vs_seqlen(plt: Any, rows: list[dict], color: dict, env_line: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    chunks = sorted({r["chunk_size"] or 0 for r in rows})
    for t in color:
        for i, c in enumerate(chunks):
            pts = sorted(
                (r["seq_len"], r["fwdbwd_tokens_per_s"])
                for r in rows
                if r["target"] == t and (r["chunk_size"] or 0) == c and r.get("fwdbwd_tokens_per_s")
            )
            if pts:
                style = {"ls": STYLES[i % len(STYLES)], "marker": MARKERS[i % len(MARKERS)]}
                label = f"{_name(t)}, chunk {c}" if c else _name(t)
                ax.plot(*zip(*pts), color=color[t], lw=2, ms=7, label=label, **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _ticks_at(ax.xaxis, [r["seq_len"] for r in rows])
    _plain_log(ax, "y")
    ax.set(xlabel="sequence length T (tokens)", ylabel="fwd+bwd tokens/s")
    return _save(plt, fig, ax, "fwd+bwd throughput vs sequence length", env_line, path)


def _chance_note(quality: list[dict]) -> str:
    stuck = [q for q in quality if q.get("left_chance") is False]
    if not stuck:
        return ""
    which = ", ".join(
        _name(q["target"]) + (f" chunk {q['chunk_size']}" if q["chunk_size"] else "") for q in stuck[:6]
    )
    more = f" and {len(stuck) - 6} more" if len(stuck) > 6 else ""
    return f"hollow: not yet below the context-free level, cannot be judged (train longer): {which}{more}"


def _levels(ax: Any, quality: list[dict], chance_key: str, color: dict) -> None:
    """The context-free level as a dashed line: one grey line when every target and length shares it
    (the same data), else one per target and length in the target's colour."""
    groups: dict[tuple[str, int], list[float]] = {}
    for q in quality:
        if q.get(chance_key) is not None:
            groups.setdefault((q["target"], q["seq_len"]), []).append(q[chance_key])
    means = {k: sum(v) / len(v) for k, v in groups.items()}
    dashed = {"lw": 1.5, "ls": (0, (3, 2))}
    if len({round(m, 6) for m in means.values()}) == 1:
        ax.axhline(next(iter(means.values())), color="dimgray", label="context-free level", **dashed)
        return
    for (t, T), level in means.items():
        ax.axhline(level, color=color[t], label=f"{_name(t)}, T = {T}: context-free level", **dashed)


def _marker_face(q: dict, c: Any) -> Any:
    return "white" if q.get("left_chance") is False else c


def _loss_vs_chunk(
    plt: Any, quality: list[dict], color: dict, option: str, env_line: str, path: Path
) -> Path:
    key, chance_key, label = quality_metric(quality)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    seq_lens = sorted({q["seq_len"] for q in quality})
    for t in color:
        for i, T in enumerate(seq_lens):
            sel = sorted(
                (q for q in quality if q["target"] == t and q["seq_len"] == T and q.get(key) is not None),
                key=lambda q: q["chunk_size"] or 0,
            )
            chunked = [q for q in sel if q["chunk_size"]]
            style = {"color": color[t], "ls": STYLES[i % len(STYLES)]}
            if chunked:
                xs, ys = [q["chunk_size"] for q in chunked], [q[key] for q in chunked]
                errs = [q.get(f"{key}_std") or 0.0 for q in chunked]
                ax.errorbar(xs, ys, yerr=errs, capsize=4, lw=2, label=f"{_name(t)}, T = {T}", **style)
                for q, x, y in zip(chunked, xs, ys):
                    ax.plot(
                        x, y, MARKERS[i % len(MARKERS)], ms=9, color=color[t], mfc=_marker_face(q, color[t])
                    )
            for q in sel:
                if not q["chunk_size"]:
                    ax.axhline(
                        q[key], lw=1.5, label=f"{_name(t)}, T = {T} (no {_option_label(option)})", **style
                    )
    _levels(ax, quality, chance_key, color)
    chunks = [q["chunk_size"] for q in quality if q["chunk_size"]]
    if chunks:
        ax.set_xscale("log", base=2)
        _ticks_at(ax.xaxis, chunks)
    seeds = max(len(q.get("seeds") or []) for q in quality)
    steps = sorted({q["steps"] for q in quality})
    bars = f"mean ± std of {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set(xlabel=f"{_option_label(option)} (tokens)", ylabel=label)
    heading = f"Quality vs {_option_label(option)}: {'/'.join(map(str, steps))} steps, {bars}"
    return _save(plt, fig, ax, heading, env_line, path, _chance_note(quality))


def _speed_vs_quality(plt: Any, quality: list[dict], color: dict, env_line: str, path: Path) -> Path:
    key, chance_key, label = quality_metric(quality)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for t in color:
        sel = sorted(
            (q for q in quality if q["target"] == t and q.get(key) is not None),
            key=lambda q: q["chunk_size"] or 0,
        )
        if not sel:
            continue
        xs, ys = [q["train_tokens_per_s"] for q in sel], [q[key] for q in sel]
        ax.errorbar(
            xs,
            ys,
            xerr=[q.get("train_tokens_per_s_std") or 0.0 for q in sel],
            yerr=[q.get(f"{key}_std") or 0.0 for q in sel],
            color=color[t],
            lw=1,
            ls=":",
            capsize=4,
            label=_name(t),
        )
        for q, x, y in zip(sel, xs, ys):
            ax.plot(x, y, "o", ms=10, color=color[t], mfc=_marker_face(q, color[t]))
            if q["chunk_size"]:
                ax.annotate(
                    str(q["chunk_size"]), (x, y), xytext=(7, 6), textcoords="offset points", color=color[t]
                )
    _levels(ax, quality, chance_key, color)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.set(xlabel="training tokens/s (median over the run; higher is faster)", ylabel=label)
    heading = "Speed vs quality (point labels: chunk size)"
    return _save(plt, fig, ax, heading, env_line, path, _chance_note(quality))
