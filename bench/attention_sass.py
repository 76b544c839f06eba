"""Instruction mix of the 8-bit attention kernel (CUDA): registers, spills, shared memory and the
SASS opcode counts of each of its loops (with ``fixed_max`` the kernel holds both the fixed-max
loop and the online-softmax fallback), per config. Where the time goes when the kernel is bound by
instruction issue rather than by the tensor cores.

    python bench/attention_sass.py [--dim 64] [--exp f32 poly4]   # each with and without fixed_max

Writes attention_sass.json (and the full SASS per config) to $OUT or bench/results.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
from pathlib import Path

import torch


def loops(sass: str) -> list[dict[str, int]]:
    """Opcode counts of every loop in a SASS listing (Triton's ``LBBn:`` labels: the lines from a
    label to the last branch back to it), in the order they appear."""
    lines = sass.splitlines()
    labels = {ln.strip()[:-1]: i for i, ln in enumerate(lines) if re.fullmatch(r"\s*[A-Za-z_.$][\w.$]*:\s*", ln)}
    spans: dict[int, int] = {}
    for i, ln in enumerate(lines):
        m = re.search(r"\bBRA\s+`?\(?([A-Za-z_.$][\w.$]*)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            spans[labels[m.group(1)]] = i
    out = []
    for a in sorted(spans):
        ops: collections.Counter = collections.Counter()
        for ln in lines[a:spans[a] + 1]:
            m = re.search(r"(?:^|\s)(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)(?:\.[\w.]+)?(?:\s[^:]*)?;", ln)
            if m:
                ops[m.group(1)] += 1
        out.append(dict(ops.most_common()))
    return out


def loop_opcodes(sass: str) -> dict[str, int]:
    """Opcode counts of the longest loop (``{}`` if there is none)."""
    return max(loops(sass), key=lambda o: sum(o.values()), default={})


def main() -> None:
    import triton

    from lsgq_compiler.kernels import triton_attention as ta

    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--exp", nargs="+", default=["f32"])
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "bench/results"))
    out.mkdir(parents=True, exist_ok=True)
    q, k, v = (torch.randn(1, 2, 1024, args.dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    jit = ta._int8_attn_fwd
    launched = []

    class Spy:  # records the compiled kernel that the launch returns
        def __getitem__(self, grid):
            def launch(*a, **kw):
                launched.append(jit[grid](*a, **kw))
                return launched[-1]
            return launch

    ta._int8_attn_fwd = Spy()
    from lsgq_compiler.kernels.attention import cuda_settings

    res = {"gpu": torch.cuda.get_device_name(), "triton": triton.__version__, "configs": []}
    try:
        for e, fixed in ((e, f) for e in args.exp for f in (True, False)):
            cfg = dict(cuda_settings(args.dim), exp=e, fixed_max=fixed)
            ta.triton_int8_attention(q, k, v, args.dim ** -0.5, True, **cfg)
            kern = launched[-1]
            sass = kern.asm.get("sass")
            if sass is None:
                from triton.tools.disasm import get_sass

                sass = get_sass(kern.asm["cubin"])
            name = f"attention_sass_d{args.dim}_{e}{'_fixed' if fixed else ''}.sass"
            (out / name).write_text(sass)
            row = {**cfg, "n_regs": kern.n_regs, "n_spills": kern.n_spills, "shared_bytes": kern.metadata.shared,
                   "loops": [{"instructions": sum(o.values()), "opcodes": o} for o in loops(sass)]}
            res["configs"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        ta._int8_attn_fwd = jit
    (out / "attention_sass.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
