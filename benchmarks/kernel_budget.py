"""Budgets for the static kernel report (``scripts/kernel_report.py --budget``): the figures of today's
report that a change may improve but must not worsen, and the check. Plain Python on the report's rows
(no Triton import), so tests can use it in-process."""

from __future__ import annotations

from typing import Any

_OPERAND_RANK = {"bf16": 0, "f16": 0, "fp16": 0, "e4m3": 0, "e5m2": 0, "tf32": 1, "f32": 2}
_PATH_RANK = {"triton": 0, "compiled": 1, "chunked": 2}  # what auto runs on CUDA, best first


def _worst_operand(types: list[str]) -> int:
    return max((_OPERAND_RANK.get(t, 2) for t in types), default=-1)


def budget_entries(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The budgeted figures of a report: per kernel launch its spill bytes per thread, tensor-core
    operand types, replicated-warp products per step, programs, status and the model's exposed latency
    per step (µs, from the SASS: more instructions, loads or barriers per step raise it); per chunked
    path its eager ops per chunk."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = f"{r['config']}/{r['dispatch']}"
        out[key] = {"auto_cuda": r["auto_cuda"]}
        if "eager_launches_per_chunk" in r:
            c = r["eager_launches_per_chunk"]
            out[key]["eager_ops_per_chunk_fwd"] = c["fwd_per_chunk"]
            out[key]["eager_ops_per_chunk_fwd_bwd"] = c["fwd_bwd_per_chunk"]
        for ln in (r.get("kernel") or {}).get("launches", []):
            out[f"{key}/{ln['kernel'].split('.')[-1]} ({ln['role']})"] = {
                "status": ln["status"],
                "spill_bytes": ln.get("stack"),
                "operand_types": ln.get("operand_types"),
                "programs": ln["programs"],
                "replicated_dots": ln.get("replicated_dots", 0),
                "exposed_us": round(ln.get("step_us", {}).get("exposed", 0.0), 2),
            }
    return out


def regressions(rows: list[dict[str, Any]], budgets: dict[str, dict[str, Any]]) -> list[str]:
    """Where a report is worse than the budget: ``auto`` on CUDA taking a slower path (kernel →
    compiled chunked → eager chunked), a kernel that no longer compiles, more spill bytes, wider
    tensor-core operands (bf16 → tf32 → none), more replicated-warp products, more exposed latency per
    step, fewer programs, more eager ops per chunk, or a budgeted
    entry missing (a path that disappeared). Better figures pass (update the budget)."""
    got = budget_entries(rows)
    problems = []
    for key, want in budgets.items():
        have = got.get(key)
        if have is None:
            problems.append(f"{key}: not in the report (budgeted: {want})")
            continue
        if "auto_cuda" in want and _PATH_RANK[have["auto_cuda"]] > _PATH_RANK[want["auto_cuda"]]:
            problems.append(f"{key}: auto runs {have['auto_cuda']!r} on CUDA (budget: {want['auto_cuda']!r})")
        if "status" in want and have["status"] != "ok":
            problems.append(f"{key}: compile status {have['status']!r}")
            continue
        if (have.get("spill_bytes") or 0) > (want.get("spill_bytes") or 0):
            problems.append(f"{key}: spill {have['spill_bytes']} B/thread > budget {want['spill_bytes']}")
        if "operand_types" in want and _worst_operand(have["operand_types"] or []) > _worst_operand(
            want["operand_types"] or []
        ):
            problems.append(
                f"{key}: operand types {have['operand_types']} wider than budget {want['operand_types']}"
            )
        if "replicated_dots" in want and (have.get("replicated_dots") or 0) > want["replicated_dots"]:
            problems.append(
                f"{key}: {have['replicated_dots']} replicated-warp products per step > budget "
                f"{want['replicated_dots']}"
            )
        if "exposed_us" in want and have["exposed_us"] > want["exposed_us"]:
            problems.append(
                f"{key}: exposed latency {have['exposed_us']} µs per step > budget {want['exposed_us']}"
            )
        if "programs" in want and have["programs"] < want["programs"]:
            problems.append(f"{key}: {have['programs']} programs < budget {want['programs']}")
        for name in ("eager_ops_per_chunk_fwd", "eager_ops_per_chunk_fwd_bwd"):
            if name in want and have.get(name, 0) > want[name]:
                problems.append(f"{key}: {name} {have.get(name)} > budget {want[name]}")
    return problems
