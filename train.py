"""Train any memnets model from a YAML config.

    python train.py configs/mqar/attention.yaml
    python train.py configs/lm/attention-tiny.yaml data.path=notes.txt train.steps=500
    python train.py CONFIG --resume                       # continue the run in run.dir
    python train.py CONFIG model.d_model=64 --print-config  # the resolved config; nothing is run
    torchrun --nproc_per_node 2 train.py CONFIG           # DistributedDataParallel (gloo on CPU)
    python train.py CONFIG --nproc-per-node 2             # the same, with train.py's exit status

Overrides are dotted ``key.sub=value`` pairs parsed as YAML values.

Exit status: 0 done; 2 a config error (nothing written); 3 run.dir is in use by another run; 128 + the
signal number when SIGTERM/SIGINT stopped the run after a checkpoint (143, 130); 1 anything else. Under
``torchrun`` each worker exits so, but torchrun itself exits 1 when it is the one signalled; with
``--nproc-per-node`` train.py runs torchrun's launcher itself and exits with its workers' status.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from typing import NoReturn

import yaml

from memnets.config import load_config, to_dict
from memnets.run_dir import RunDirLocked
from memnets.trainer import train
from memnets.validation import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.d_model=64"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in run.dir (same as run.resume=auto)"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (after base: inheritance and overrides) as YAML and exit",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        help="start this many processes on this machine (torchrun --standalone) and exit as they do",
    )
    args = parser.parse_args(argv)
    if args.print_config:
        return _print_config(args.config, args.overrides)
    if args.nproc_per_node is not None:
        if args.nproc_per_node < 1:
            parser.error(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
        return _launch(
            args.nproc_per_node, [args.config, *args.overrides, *(["--resume"] if args.resume else [])]
        )
    overrides = list(args.overrides) + (["run.resume=auto"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
        result = train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except RunDirLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"error: {e.strerror}", file=sys.stderr)
        return 1
    if result.preempted is not None:
        return 128 + result.preempted
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    acc = result.metrics.get("val_accuracy")
    summary = f"final step {result.step}: val_loss {result.metrics.get('val_loss', float('nan')):.4f}"
    if acc is not None:
        summary += f", val_accuracy {acc:.4f}"
    if "val_bpb" in result.metrics:
        summary += f", val_bpb {result.metrics['val_bpb']:.4f}"
    print(f"{summary} (run folder: {result.run_dir})")
    return 0


def _print_config(path: str, overrides: list[str]) -> int:
    """The config as ``train.py`` would run it, validated; no run folder, no data read."""
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _launch(nproc: int, script_args: list[str]) -> int:
    """torchrun's launcher in this process, so that the exit status is the workers': torchrun forwards a
    SIGTERM/SIGINT to its workers (which save and exit 128 + signal) but then ends itself with a
    traceback and status 1."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", __file__, *script_args]
    )
    try:
        run(launch)
    except SignalException as e:
        print(f"stopped by {signal.Signals(e.sigval).name}; the workers saved a checkpoint", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        print(e, file=sys.stderr)
        # a worker's own status (2, 3, 128 + signal), or 128 + N for one killed by signal N
        code = min(e.failures.values(), key=lambda f: f.timestamp).exitcode
        return code if code > 0 else 128 - code
    return 0


def _exit_without_finalization(code: int) -> NoReturn:
    """End a torchrun worker without interpreter finalization, after flushing the output.

    gloo runs collectives on worker threads that can still hold a finished collective's buffers. Where
    Python has already dropped such a tensor, the thread takes the GIL to free it, and Python ends any
    thread that asks for the GIL once finalization has begun; that pthread_exit unwinds through a noexcept
    destructor and aborts the process ("terminate called without an active exception", SIGABRT), after a
    successful run. destroy_process_group does not stop these threads (the group stays referenced from
    torch's DTensor and DeviceMesh caches), so a worker skips finalization: the run's files are written
    and closed by now, and only the output streams need flushing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalization(code)
    sys.exit(code)
