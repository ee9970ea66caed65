"""The static kernel report's estimates beside a GPU's measured device time, kernel by kernel: what
the next lent GPU needs to calibrate the roofline model (``benchmarks/kernel_roofline.py``) rather
than only the sum. The report (``scripts/kernel_report.py``) estimates each launch of a layer; the
benchmark (``scripts/bench_titans_kernels.py``, run by the GPU check) profiles one call and sums the
device time of each of the memory's Triton kernels by name. Both name kernels the same way
(``_wide_split_kernel``), so their ratio per kernel says which term of the model is off, e.g. the
exposed latency of the split recurrence against the state traffic of the recompute. Plain JSON in,
rows and markdown out: no Triton, no GPU."""

from __future__ import annotations

from typing import Any

FORWARD = "fwd"
BOTH = "fwd+bwd"


def estimated_ms(report: dict[str, Any], config: str, passes: str) -> dict[str, float]:
    """Estimated ms per kernel name for one layer of ``config``'s first memory with a kernel in
    ``report`` (``report.json`` of ``scripts/kernel_report.py``): the forward's launches for
    ``passes="fwd"``, every launch (the backward's recompute too) for ``"fwd+bwd"``. Launches of one
    kernel add up (the split forward and its recompute are one kernel)."""
    if passes not in (FORWARD, BOTH):
        raise ValueError(f"passes={passes!r} is not one of {[FORWARD, BOTH]}")
    for row in report["rows"]:
        launches = (row.get("kernel") or {}).get("launches")
        if row["config"] != config or not launches:
            continue
        out: dict[str, float] = {}
        for launch in launches:
            if passes == FORWARD and (not launch["role"].startswith("fwd") or "store" in launch["role"]):
                continue
            name = launch["kernel"].rsplit(".", 1)[-1]
            out[name] = out.get(name, 0.0) + launch["est_ms"]
        return out
    raise KeyError(f"{config!r} has no kernel launches in the report")


def calibration_rows(
    estimated: dict[str, float], measured: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """One row per kernel name in either: the estimate, the measured ms and launches (the benchmark's
    ``kernels``), measured / estimated (None where either is missing), largest measured first."""
    names = sorted(set(estimated) | set(measured), key=lambda n: -measured.get(n, {}).get("ms", 0.0))
    rows = []
    for name in names:
        est, got = estimated.get(name), measured.get(name, {})
        ms = got.get("ms")
        rows.append(
            {
                "kernel": name,
                "est_ms": est,
                "measured_ms": ms,
                "launches": got.get("launches"),
                "measured_over_est": ms / est if ms is not None and est else None,
            }
        )
    return rows


def calibration_markdown(rows: list[dict[str, Any]], title: str) -> list[str]:
    """Markdown lines of :func:`calibration_rows`' rows under ``title``."""

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        title,
        "",
        "| kernel | est. ms | measured ms | launches | measured / est. |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {f(r['est_ms'], '.2f')} | {f(r['measured_ms'], '.2f')} | "
            f"{f(r['launches'], 'd')} | {f(r['measured_over_est'], '.2f')} |"
        )
    return lines


def bench_calibration(
    bench: dict[str, Any], report: dict[str, Any], config: str, heads: int, dim: int
) -> list[str]:
    """Markdown lines for the GPU check: per pass of the benchmark's Triton rows at ``config``'s chunk
    size and in the report's layout (the kernels' own warps, or the ``wide_num_warps`` the report was
    made at: the GPU check labels those rows "triton (N warps)"), the report's estimates for
    ``config`` beside the measured kernels, where the benchmark ran the report's micro-batch and
    ``config``'s memory (``heads`` of ``dim``); none otherwise (the CPU smoke run, other shapes)."""
    meta, shape = bench.get("meta") or {}, report.get("meta") or {}
    if (meta.get("B"), meta.get("T"), meta.get("H"), meta.get("D")) != (
        shape.get("batch"),
        shape.get("seq"),
        heads,
        dim,
    ):
        return []
    chunk = next(
        (r.get("chunk_size") for r in report["rows"] if r["config"] == config and r.get("kernel")), None
    )
    warps = shape.get("wide_num_warps")
    backend = "triton" if warps is None else f"triton ({warps} warps)"
    lines: list[str] = []
    for row in bench.get("rows", []):
        if row.get("backend") != backend or row.get("chunk_size") != chunk or not row.get("kernels"):
            continue
        rows = calibration_rows(estimated_ms(report, config, row["pass"]), row["kernels"])
        title = (
            f"Static estimates (Triton {shape.get('triton')}, sm_{shape.get('arch')}) against the measured "
            f"kernels: {config}'s memory, C = {chunk}, {row['pass']}, {backend}"
        )
        lines += ["", *calibration_markdown(rows, title)]
    return lines
