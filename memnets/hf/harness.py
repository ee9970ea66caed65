"""lm-evaluation-harness on memnets models (extra ``memnets[eval]``).

:func:`run_lm_eval` evaluates an exported folder exactly as ``lm_eval --model hf --model_args
pretrained=DIR,trust_remote_code=True`` does (the ``hf`` backend, ``AutoModelForCausalLM`` and
``AutoTokenizer``). :func:`evaluate_run` is what ``scripts/eval.py RUN --lm-eval TASKS`` calls: export
the run's newest checkpoint to ``RUN/hf``, evaluate, write the results JSON beside the run.

The papers of the families here report this zero-shot set (e.g. Titans, arXiv:2501.00663, Table 1):
``wikitext`` (word perplexity), ``lambada_openai`` (perplexity and accuracy), ``piqa``, ``hellaswag``
(``acc_norm``), ``winogrande``, ``arc_easy``, ``arc_challenge`` (``acc_norm``), ``social_iqa`` (SIQA),
``boolq``; lm-eval downloads their datasets from the Hub on first use."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .export import export_run

log = logging.getLogger("memnets")

PAPER_TASKS = (
    "wikitext",
    "lambada_openai",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "social_iqa",  # SIQA
    "boolq",
)


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ImportError(
            "lm-evaluation-harness is needed for this; install it with: pip install 'memnets[eval]'"
        ) from None
    return lm_eval


def run_lm_eval(
    model_dir: str | Path,
    tasks: list[str],
    *,
    include_path: str | Path | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with the ``hf`` model on ``model_dir`` (float32 weights, as
    exported); ``include_path``: a folder of extra task YAMLs. Returns lm-eval's results dict."""
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("tasks is empty; name at least one lm-eval task, e.g. " + ",".join(PAPER_TASKS))
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "trust_remote_code": True, "dtype": "float32"},
        tasks=list(tasks),
        batch_size=batch_size,
        device=device,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=log_samples,
        task_manager=manager,
    )


def evaluate_run(
    run_dir: str | Path,
    tasks: list[str],
    out: str | Path | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], Path]:
    """Export run ``run_dir`` (newest checkpoint) to ``RUN/hf``, run :func:`run_lm_eval` on it with
    ``kwargs`` and write ``{run, step, weights, tasks, results, ...}`` to ``out`` (default
    ``RUN/lm_eval.json``). Returns (what was written, its path)."""
    _lm_eval()
    from lm_eval.utils import handle_non_serializable, make_table

    from ..config import load_config

    run = Path(run_dir)
    if (run / "config.yaml").is_file() and (kind := load_config(run / "config.yaml").data.kind) != "text":
        raise ValueError(f"{run}: lm-eval needs a text run with a tokenizer; this one has data.kind={kind!r}")
    info = export_run(run, run / "hf")
    results = run_lm_eval(info.out_dir, tasks, **kwargs)
    print(make_table(results))
    record = {
        "run": str(run),
        "step": info.step,
        "weights": str(info.weights),
        "hf_dir": str(info.out_dir),
        "tasks": list(tasks),
        **{
            k: results[k]
            for k in ("results", "versions", "n-shot", "higher_is_better", "n-samples")
            if k in results
        },
    }
    if "samples" in results:
        record["samples"] = results["samples"]
    path = Path(out) if out is not None else run / "lm_eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=handle_non_serializable))
    log.info("lm-eval results for %s (step %s) written to %s", run, info.step, path)
    return record, path
