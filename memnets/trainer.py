"""The training loop behind ``train.py``.

AdamW with linear warmup and cosine decay, gradient clipping and accumulation, bf16 autocast on CUDA,
optional ``torch.compile``; DistributedDataParallel (or FSDP2 with ``train.distributed=fsdp``) under
``torchrun``. Each run folder holds the resolved ``config.yaml``, ``meta.json`` (git commit, versions,
device), ``metrics.jsonl`` (one JSON object per logged step and per evaluation), checkpoints and, at the
end, ``model.safetensors``.

Checkpoints hold model, optimizer, scheduler, step, RNG states and the config. Batches are a function of
``(seed, step)``, so the step is the data position and a resumed run continues bitwise like an
uninterrupted one on CPU. SIGTERM/SIGINT finish the current step, save a checkpoint and stop
(``TrainResult.preempted``); a second signal, or ``EVAL_GRACE_S`` after the first, abandons an evaluation
in progress. ``run.resume=auto`` (``--resume``) continues; it refuses a change of the model, the data or
``run.seed`` and logs any other change. A step whose loss or gradient is not finite is skipped and
counted; ``train.max_bad_steps`` in a row stop the run with an error. The run folder is locked for the
run's lifetime and written crash-safely (see :mod:`memnets.run_dir`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import list_checkpoints, load_latest, load_model_weights, save_checkpoint
from .config import Config, save_config, to_dict
from .data import build_task
from .data.mqar import IGNORE, MQARTask, accuracy_by_pairs
from .environment import (
    device_name,
    git_info,
    init_distributed,
    peak_memory_mb,
    reuse_cpu_memory,
    setup_logging,
    versions,
)
from .metrics import MetricsLog
from .model import LM
from .optim import apply_trainable, build_optimizer, lr_lambda
from .resume import config_differences, optimizer_state_for
from .run_dir import RunDirLocked, RunLock, atomic_path, atomic_write_text, remove_orphaned_tmp
from .validation import ConfigError

log = logging.getLogger("memnets")
EVAL_GRACE_S = 10.0  # how long an evaluation may go on after a SIGINT/SIGTERM before it is abandoned


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    preempted: int | None = None  # the signal number that stopped the run, if one did


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dist, self.device = init_distributed(cfg.train.device, cfg.train.tf32)
        setup_logging(self.dist.main)
        t = cfg.train
        if self.device.type == "cpu" and t.cpu_allocator == "reuse":
            log.info(reuse_cpu_memory())
        if t.batch_size % self.dist.world:
            raise ConfigError(
                f"train.batch_size={t.batch_size} must be divisible by the number of processes ({self.dist.world})"
            )
        self.local_batch = t.batch_size // self.dist.world
        self.micro = t.micro_batch_size or self.local_batch
        if self.local_batch % self.micro:
            raise ConfigError(
                f"train.micro_batch_size={self.micro} must divide the per-process batch {self.local_batch}"
            )
        self.accum = self.local_batch // self.micro

        self.task = build_task(cfg.data, cfg.run.seed)
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = self.task.vocab_size
        elif cfg.model.vocab_size < self.task.vocab_size:
            raise ConfigError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary ({self.task.vocab_size})"
            )

        self.run_dir = Path(cfg.run.dir.format(name=cfg.run.name or "run"))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop_signal: int | None = None
        self.signals, self.signal_time = 0, 0.0
        self.lock = self._lock()
        try:
            self._build(self._resume_state())
        except BaseException:
            if self.lock is not None:
                self.lock.release(discard=True)
                self.lock = None
            raise

    def _build(self, resume_state: dict[str, Any] | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(cfg.run.seed)
        self.model = LM(cfg.model).to(self.device)
        self.model.checkpoint_blocks = t.activation_checkpointing
        self.model.recompute_memory_chunks = t.memory_recompute
        if t.activation_checkpointing:
            log.info("train.activation_checkpointing: each block keeps its input and re-runs in the backward")
        if t.memory_recompute:
            log.info(
                "train.memory_recompute: the chunked and compiled memory engines keep each chunk's start state "
                "and re-run its step in the backward (the Triton kernels keep their own checkpoints)"
            )
        if t.init_from and resume_state is None:
            source = load_model_weights(self.model, t.init_from)
            log.info(
                "train.init_from: loaded all %d weight tensors from %s", len(self.model.state_dict()), source
            )
        apply_trainable(self.model, t.trainable)
        if resume_state is not None:
            self.model.load_state_dict(resume_state["model"])
        # FSDP2 swaps parameters for sharded ones, so the optimizer is built on the wrapped model
        self.forward_model = self._wrap(self.model)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, t.warmup_steps, t.steps, t.min_lr_ratio)
        )
        self.step, self.bad_steps = 0, 0
        if resume_state is not None:
            self._restore(resume_state)
        self.amp = t.precision == "bf16" or (
            t.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        if t.precision == "bf16" and self.device.type == "cpu":
            log.info("train.precision=bf16 on CPU: autocast to bfloat16 on CPU")

    def close(self) -> None:
        """Release the run folder (the lock); ``run()`` ends with this."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- setup helpers -----------------------------------------------------------------------------

    def _lock(self) -> RunLock | None:
        """Rank 0 locks ``run.dir`` for the whole run, and every rank stops if that fails."""
        lock, error = None, None
        if self.dist.main:
            try:
                lock = RunLock(self.run_dir)
            except RunDirLocked as e:
                error = e
        if self.dist.world > 1:
            flag = torch.tensor([error is not None], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and error is None:
                error = RunDirLocked(f"run.dir={str(self.run_dir)!r} is in use by another run (see rank 0)")
        if error is not None:
            raise error
        if self.dist.main:  # with the lock held no live process owns these
            remove_orphaned_tmp(self.run_dir, self.ckpt_dir)
        return lock

    def _resume_state(self) -> dict[str, Any] | None:
        if not list_checkpoints(self.ckpt_dir):
            return None
        if self.cfg.run.resume == "never":
            raise ConfigError(
                f"run.dir={str(self.run_dir)!r} already has checkpoints; pass --resume (run.resume=auto) to "
                "continue that run, or choose another run.dir / run.name"
            )
        found = load_latest(self.ckpt_dir)
        if found is None:
            raise RuntimeError(f"no loadable checkpoint in {self.ckpt_dir}")
        state, path = found
        blocking, changed = config_differences(state["config"], to_dict(self.cfg))
        if blocking:
            raise ConfigError(
                f"cannot resume from {path}: "
                + "; ".join(
                    f"{k} differs from the checkpoint ({a!r} there, {b!r} now)" for k, a, b in blocking
                )
                + " (the model, the data and run.seed, which fixes the batch of each step, must stay the same)"
            )
        if state["step"] > self.cfg.train.steps:
            raise ConfigError(
                f"train.steps={self.cfg.train.steps} is below the step of the checkpoint to resume from "
                f"({state['step']}, {path}); set train.steps >= {state['step']} to continue the run"
            )
        for k, a, b in changed:
            log.info("resuming with %s=%r (the checkpoint had %r)", k, b, a)
        log.info("resuming from %s (step %d)", path, state["step"])
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        """Optimizer, scheduler, step and RNG states (the weights are loaded before wrapping)."""
        optim = optimizer_state_for(state["optimizer"], self.model, self.optimizer, by_name=self._fsdp)
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.model, self.optimizer, optim, options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(optim)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _wrap(self, model: nn.Module) -> nn.Module:
        t = self.cfg.train
        if self.dist.world > 1:
            if t.distributed == "fsdp":
                from torch.distributed.fsdp import fully_shard

                for block in model.blocks:
                    fully_shard(block)
                fully_shard(model)
            else:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                model = DistributedDataParallel(model, device_ids=ids)
        if t.compile:
            model = torch.compile(model)
        return model

    @property
    def _fsdp(self) -> bool:
        return self.dist.world > 1 and self.cfg.train.distributed == "fsdp"

    def _state(self) -> dict[str, Any]:
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            model_sd, optim_sd = get_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            model_sd = self.model.state_dict()
            # by parameter name, as FSDP's: a resume may then regroup it (resume.optimizer_state_for)
            optim_sd = optimizer_state_for(
                self.optimizer.state_dict(), self.model, self.optimizer, by_name=True
            )
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "bad_steps": self.bad_steps,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "config": to_dict(self.cfg),
        }

    def save(self) -> None:
        state = self._state()  # every rank joins the gather under FSDP
        if self.dist.main:
            t = self.cfg.train
            path = save_checkpoint(state, self.ckpt_dir, self.step, t.keep_checkpoints, t.checkpoint_checksum)
            log.info("saved checkpoint %s", path)
        if self.dist.world > 1:
            dist.barrier()

    # -- steps -------------------------------------------------------------------------------------

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _loss(
        self, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with self._autocast():
            logits = model(ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        aux = self.model.aux_loss if model.training else None
        if model.training and self.cfg.train.z_loss:
            z = self.cfg.train.z_loss * torch.logsumexp(logits.float(), -1)[labels != IGNORE].square().mean()
            aux = z if aux is None else aux + z
        return loss, aux

    def train_step(self) -> dict[str, float]:
        """One optimizer step over the global batch of ``self.step``; returns its log record."""
        model, t = self.forward_model, self.cfg.train
        model.train()
        ids, labels = self.task.train_batch(self.step, t.batch_size)
        lo = self.dist.rank * self.local_batch
        ids, labels = (
            ids[lo : lo + self.local_batch].to(self.device),
            labels[lo : lo + self.local_batch].to(self.device),
        )
        total_loss = torch.zeros((), device=self.device)
        total_aux = torch.zeros((), device=self.device)
        for i in range(self.accum):
            sl = slice(i * self.micro, (i + 1) * self.micro)
            sync = i == self.accum - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                loss, aux = self._loss(model, ids[sl], labels[sl])
                objective = loss if aux is None else loss + aux
                (objective / self.accum).backward()
            total_loss += loss.detach() / self.accum
            if aux is not None:
                total_aux += aux.detach() / self.accum
        if self.dist.world > 1:
            dist.all_reduce(total_loss, op=dist.ReduceOp.AVG)
            dist.all_reduce(total_aux, op=dist.ReduceOp.AVG)
        params = [p for p in self.model.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.step + 1, "loss": total_loss.item(), "lr": lr, "grad_norm": gnorm.item()}
        if self.model.aux_loss is not None or t.z_loss:
            record["aux_loss"] = total_aux.item()
        if math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]):
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            record["skipped"] = 1
            log.warning(
                "step %d: non-finite loss %s or grad norm %s; step skipped (%d in a row)",
                self.step + 1,
                record["loss"],
                record["grad_norm"],
                self.bad_steps,
            )
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # a skipped step still advances the schedule (its position is the step count); PyTorch
            # warns about that when no optimizer step has run yet, as if the calls were out of order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.step += 1
        return record

    def _abandon_eval(self) -> bool:
        """Whether to stop an evaluation: a second SIGINT/SIGTERM, or EVAL_GRACE_S since the first
        (torchrun kills its workers 30 s after forwarding a SIGTERM). Decided together under several
        processes, so they stop at the same batch."""
        local = self.stop_signal is not None and (
            self.signals > 1 or time.monotonic() - self.signal_time > EVAL_GRACE_S
        )
        if self.dist.world == 1:
            return local
        flag = torch.tensor([int(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Validation metrics, or None when a signal cut the evaluation short."""
        model = self.forward_model
        model.eval()
        bs = self.cfg.train.batch_size
        if isinstance(self.task, MQARTask):
            test = self.task.test_set()
            losses, preds = [], []
            for i in range(0, len(test.input_ids), bs):
                if self._abandon_eval():
                    return None
                ids = test.input_ids[i : i + bs].to(self.device)
                labels = test.labels[i : i + bs].to(self.device)
                with self._autocast():
                    logits = model(ids).float()
                losses.append(
                    F.cross_entropy(
                        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
                    )
                )
                preds.append(logits.argmax(-1).cpu())
            n = (test.labels != IGNORE).sum()
            out = {"val_loss": (torch.stack(losses).sum() / n).item()}
            acc = accuracy_by_pairs(torch.cat(preds), test.labels, test.num_kv_pairs)
            out.update({f"val_{k}": v for k, v in acc.items()})
            return out
        total, count = 0.0, 0
        for ids, labels in self.task.val_batches(bs, self.cfg.train.eval_batches):
            if self._abandon_eval():
                return None
            with self._autocast():
                logits = model(ids.to(self.device)).float()
            total += F.cross_entropy(
                logits.flatten(0, 1), labels.to(self.device).flatten(), reduction="sum"
            ).item()
            count += labels.numel()
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_bpb": self.task.bits_per_byte(loss)}

    # -- the loop ----------------------------------------------------------------------------------

    def _write_run_files(self) -> None:
        save_config(self.cfg, self.run_dir / "config.yaml")
        meta = {
            "git": git_info(),
            "versions": versions(),
            "device": device_name(self.device),
            "world_size": self.dist.world,
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "num_params": self.model.num_params(),
        }
        atomic_write_text(self.run_dir / "meta.json", json.dumps(meta, indent=2))

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.stop_signal is None:
            self.stop_signal, self.signal_time = signum, time.monotonic()
            log.info(
                "received %s: finishing step %d (an evaluation in progress gets %.0f s more), then saving "
                "a checkpoint; send it again to abandon an evaluation at once",
                name,
                self.step + 1,
                EVAL_GRACE_S,
            )
        elif self.signals == 2:
            log.info("received %s again: abandoning any evaluation in progress", name)

    def _eval_and_log(self, metrics: MetricsLog) -> dict[str, float] | None:
        result = self.evaluate()
        if result is None:
            log.info("evaluation at step %d abandoned (signal); it is not in metrics.jsonl", self.step)
            return None
        # the peak so far includes this evaluation's (the final one has no training record after it)
        peak = peak_memory_mb(self.device)
        metrics.write({"step": self.step, **result, "peak_mem_mb": peak})
        log.info(
            "eval step %d | %s | mem %.2f GB",
            self.step,
            " | ".join(f"{k} {v:.4f}" for k, v in result.items()),
            peak / 1e3,
        )
        return result

    def _stop_requested(self) -> int | None:
        if self.dist.world == 1:
            return self.stop_signal
        flag = torch.tensor([self.stop_signal or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def run(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        if self.dist.main:
            self._write_run_files()
        metrics = MetricsLog(self.run_dir, cfg, self.step, self.dist.main)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        tokens_per_step = t.batch_size * cfg.data.seq_len
        log.info(
            "model: %s layers of %s, %.2fM parameters | data: %s, seq_len %d | batch %d x %d accumulation x %d processes | device %s",
            cfg.model.n_layers,
            cfg.model.mixer,
            self.model.num_params() / 1e6,
            cfg.data.kind,
            cfg.data.seq_len,
            self.micro,
            self.accum,
            self.dist.world,
            device_name(self.device),
        )
        last_eval: dict[str, float] = {}
        preempted = None
        try:
            t0, window_start, steps_in_window = time.time(), time.time(), 0
            start_step = self.step
            while self.step < t.steps:
                record = self.train_step()
                steps_in_window += 1
                if self.step % t.log_every == 0 or self.step == t.steps or "skipped" in record:
                    now = time.time()
                    record["tokens_per_s"] = tokens_per_step * steps_in_window / max(now - window_start, 1e-9)
                    record["peak_mem_mb"] = peak_memory_mb(self.device)
                    eta = (now - t0) / (self.step - start_step) * (t.steps - self.step)
                    metrics.write(record)
                    aux = f" | aux {record['aux_loss']:.4f}" if "aux_loss" in record else ""
                    log.info(
                        "step %*d/%d (%5.1f%%) | loss %.4f%s | lr %.2e | gnorm %.3f | %s tok/s | mem %.2f GB | eta %s",
                        len(str(t.steps)),
                        self.step,
                        t.steps,
                        100 * self.step / t.steps,
                        record["loss"],
                        aux,
                        record["lr"],
                        record["grad_norm"],
                        f"{record['tokens_per_s']:,.0f}",
                        record["peak_mem_mb"] / 1e3,
                        _fmt_time(eta),
                    )
                    window_start, steps_in_window = now, 0
                if self.bad_steps >= t.max_bad_steps:
                    raise FloatingPointError(
                        f"{self.bad_steps} consecutive steps had a non-finite loss or gradient "
                        f"(train.max_bad_steps={t.max_bad_steps}); lower train.lr or check the model and data"
                    )
                done = self.step == t.steps
                if self.step % t.eval_every == 0 or done:
                    last_eval = self._eval_and_log(metrics) or last_eval
                    acc = last_eval.get("val_accuracy")
                    if t.early_stop_accuracy is not None and acc is not None and acc >= t.early_stop_accuracy:
                        log.info(
                            "val_accuracy %.4f >= train.early_stop_accuracy %.4f: stopping",
                            acc,
                            t.early_stop_accuracy,
                        )
                        done = True
                preempted = self._stop_requested()
                if preempted or done or self.step % t.checkpoint_every == 0:
                    self.save()
                if preempted:
                    log.info(
                        "stopped by %s at step %d; rerun with --resume to continue",
                        signal.Signals(preempted).name,
                        self.step,
                    )
                    break
                if done:
                    break
            if self.step == start_step:  # resumed at train.steps: its final evaluation is on record
                log.info("the run is already at train.steps=%d; nothing to train", t.steps)
                last_eval = {k: v for k, v in metrics.last_eval(self.step).items() if k.startswith("val_")}
            if preempted is None:
                self._export_weights()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            metrics.close()
            self.close()
        return TrainResult(self.run_dir, self.step, last_eval, preempted)

    def _export_weights(self) -> None:
        """``model.safetensors`` beside ``config.yaml`` (gathered from the shards under FSDP)."""
        from safetensors.torch import save_model

        model = self.model
        if self._fsdp:
            full = self._state()["model"]  # a collective: every rank takes part
            if not self.dist.main:
                return
            model = LM(self.cfg.model)
            model.load_state_dict(full)
        if self.dist.main:
            with atomic_path(self.run_dir / "model.safetensors") as tmp:
                save_model(model, str(tmp), metadata={"step": str(self.step)})


def train(cfg: Config) -> TrainResult:
    """Train per ``cfg``; the ``memnets`` logger is left as it was found (a run attaches its stdout
    handler), so a notebook or test that calls this keeps its own logging."""
    saved = (list(log.handlers), log.propagate, log.level)
    try:  # Trainer() already joins the process group, and its checks can raise
        return Trainer(cfg).run()
    finally:
        log.handlers[:], log.propagate, log.level = saved
        if dist.is_initialized():
            dist.destroy_process_group()
