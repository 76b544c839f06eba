"""`make demo` twice: is the W4A4 plan JSON byte-identical? (#14; ~2 x 8 min on 2 CPU cores, not in CI)

    python bench/demo_reproducible.py [--quick]

Runs ``lsgq demo`` into two temporary folders with the same torch thread count and compares
``plan_*.json`` byte for byte; exits 1 and prints the first differing line if they differ.
Budgets are iterations (``lsgq_compiler.vsr.demo.DEMO_QAO_ITERS``), so the plans must match.
"""
from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="lsgq demo --quick (fewer clips, smaller budgets)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    plans = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("a", "b"):
            out = Path(tmp) / run
            cmd = [sys.executable, "-c", "import sys; from lsgq_compiler.cli import main; sys.exit(main())",
                   "demo", "--out", str(out)] + (["--quick"] if args.quick else [])
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            plans.append({p.name: p.read_bytes() for p in sorted(out.glob("plan_*.json"))})
    a, b = plans
    same = a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    for k in a:
        if a[k] != b.get(k):
            diff = difflib.unified_diff(a[k].decode().splitlines(), b.get(k, b"").decode().splitlines(), lineterm="")
            print(k, "differs:", *list(diff)[:12], sep="\n")
    print("plans byte-identical:" if same else "plans differ:", ", ".join(f"{k} ({len(v)} bytes)" for k, v in a.items()))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
