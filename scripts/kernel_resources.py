"""Compile the MLP-memory Triton kernels ahead of time for a GPU architecture (no GPU needed) and report
their shared memory, registers and spills per (D, hidden, chunk). This is where the limits in
``memnets.kernels.titans_mlp_triton`` (``MAX_STATE_FOR_TILE``, ``MAX_CHUNK``) come from.

    python scripts/kernel_resources.py 16,64,16 32,128,32 --arch 90 --out resources.json

Configuration compiled: GELU, L2 bias, LayerNorm, residual, momentum (the Titans default memory);
``cuobjdump`` (bundled with Triton) reads the registers and the per-thread stack (spills) from the
cubin. An H100 (sm_90) has 228 KB of shared memory per SM.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from memnets.kernels import titans_mlp_triton as K
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_INTS = {"T", "NC"}
_FLOATS = {"p", "eps", "sharp", "ln_eps"}


def compile_kernel(kernel, D: int, DH: int, L: int, arch: int, num_warps: int) -> dict:
    block = K._block
    constants = dict(
        H=1,
        D=D,
        DH=DH,
        L=L,
        BL=block(L),
        BD=block(D),
        BH=block(DH),
        ACT=K.ACTIVATIONS["gelu"],
        BIAS=K.L2,
        LN=True,
        RES=True,
        HAS_MOM=True,
        STORE=False,
    )
    constants = {k: v for k, v in constants.items() if k in kernel.arg_names}
    signature = {
        a: "constexpr" if a in constants else "i32" if a in _INTS else "fp32" if a in _FLOATS else "*fp32"
        for a in kernel.arg_names
    }
    src = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps, num_stages=1)
    )
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return dict(
        shared_kb=compiled.metadata.shared / 1024,
        registers=int(registers.group(1)) if registers else None,
        spill_bytes_per_thread=int(stack.group(1)) if stack else None,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="+", help="D,hidden,chunk triples, e.g. 32,128,16")
    p.add_argument("--arch", type=int, default=90, help="compute capability (90 = H100)")
    p.add_argument("--num-warps", type=int, default=4)
    p.add_argument("--passes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    p.add_argument("--out", default="kernel_resources.json")
    a = p.parse_args(argv)
    kernels = {"fwd": K._forward_kernel, "bwd": K._backward_kernel}
    rows = []
    print(f"{'D':>4} {'hidden':>6} {'chunk':>5} {'pass':>4} {'shared KB':>9} {'regs':>4} {'spill B':>7}")
    for shape in a.shapes:
        D, DH, L = (int(x) for x in shape.split(","))
        for name in a.passes:
            r = compile_kernel(kernels[name], D, DH, L, a.arch, a.num_warps)
            print(
                f"{D:>4} {DH:>6} {L:>5} {name:>4} {r['shared_kb']:>9.0f} {r['registers']!s:>4} "
                f"{r['spill_bytes_per_thread']!s:>7}"
            )
            rows.append(dict(D=D, hidden=DH, chunk=L, **{"pass": name}, **r))
    with open(a.out, "w") as f:
        json.dump(dict(arch=a.arch, num_warps=a.num_warps, rows=rows), f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
