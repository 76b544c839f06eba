"""Fidelity of LSGQuant W4A4 on the shipped model for each deploy grid (issue #16), on the CPU.

    python bench/target_fidelity.py            # writes bench/results/target_fidelity.json

A CUDA target fixes what each layer computes (the fake quantizers compute exactly the kernel's
numbers), so the quality a target costs can be measured anywhere. Rows, all LSGQuant W4A4 with the
recipe's own budgets on the built-in eval clips (centre crops of 32x32 LQ, as ``lsgq compare
--max-lq 32``): ``sim`` (the paper's formats, simulated), ``cuda-sm90`` (int4 per row x FP8 rows,
Hadamard blocks of at most 128: the fused prologue's block), the same with the largest blocks
(``hadamard_max_block=4096``), and ``cuda-sm90-g128`` (int4 groups of 128, mslk) with both block
caps; ``cuda-sm90`` with the low-rank branch beside the GEMM in bf16 (``lowrank_in_gemm=False``,
what checkpoints before the branch moved into the FP8 GEMM computed). Fidelity = PSNR of the upscaled clip against the full-precision model's; PSNR against the
ground truth too. Deterministic (iteration budgets): the same command gives the same numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

ROWS = [("sim", "sim", {}), ("cuda-sm90", "cuda-sm90", {}),
        ("cuda-sm90, hadamard_max_block=4096", "cuda-sm90", {"hadamard_max_block": 4096}),
        ("cuda-sm90-g128", "cuda-sm90-g128", {}),
        ("cuda-sm90-g128, hadamard_max_block=4096", "cuda-sm90-g128", {"hadamard_max_block": 4096}),
        ("cuda-sm90, lowrank_in_gemm=False", "cuda-sm90", {"lowrank_in_gemm": False})]


def main() -> None:
    from lsgq_compiler.quiet import quiet

    quiet()
    from lsgq_compiler import QuantConfig
    from lsgq_compiler.fsutil import atomic_write_text
    from lsgq_compiler.vsr.evaluate import VSRRunner, load_eval_clips
    from lsgq_compiler.vsr.metrics import psnr_video

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-lq", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--rows", default="all", help="comma-separated row indices (default all); the other rows "
                    "of an existing results file are kept")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "target_fidelity.json"))
    args = ap.parse_args()
    rows = ROWS if args.rows == "all" else [ROWS[int(i)] for i in args.rows.split(",")]
    runner = VSRRunner(frames=args.frames, progress=False)
    clips = load_eval_clips("builtin", args.frames, max_lq=args.max_lq)
    fp = {c.name: runner.upscale(c.lq) for c in clips}
    res = {"command": "python bench/target_fidelity.py " + " ".join(sys.argv[1:]), "clips": len(clips),
           "max_lq": args.max_lq, "fp_psnr_vs_gt": round(float(np.mean([psnr_video(c.hq, fp[c.name]) for c in clips])), 3),
           "rows": {}}
    out = Path(os.environ["OUT"]) / "target_fidelity.json" if os.environ.get("OUT") else Path(args.out)
    if args.rows != "all" and out.exists():  # a partial re-run updates its rows, keeps the others
        res["rows"] = json.loads(out.read_text()).get("rows", {})
    for label, target, opts in rows:
        t0 = time.perf_counter()
        v = runner.quantize(QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, target=target, options=opts))
        kinds: dict[str, int] = {}
        blocks: dict[str, int] = {}
        for s in v.qm.plan.layers.values():
            k = s.extra.get("target", {}).get("kind", "sim" if s.quantized else "fp")
            kinds[k] = kinds.get(k, 0) + 1
            b = str(s.extra.get("hadamard_block", 0))
            blocks[b] = blocks.get(b, 0) + 1
        ys = {c.name: runner.upscale(c.lq, v.qm) for c in clips}
        res["rows"][label] = {
            "target": target, "options": opts, "kinds": kinds, "hadamard_blocks": blocks,
            "fidelity_psnr_vs_fp_db": round(float(np.mean([psnr_video(fp[c.name], ys[c.name]) for c in clips])), 3),
            "psnr_vs_gt_db": round(float(np.mean([psnr_video(c.hq, ys[c.name]) for c in clips])), 3),
            "avg_weight_bits": v.qm.plan.summary()["avg_weight_bits"], "seconds": round(time.perf_counter() - t0, 1),
            "command": res["command"], "run": time.strftime("%Y-%m-%d", time.gmtime())}
        print(f"{label:<42} fidelity {res['rows'][label]['fidelity_psnr_vs_fp_db']:6.2f} dB  "
              f"vs GT {res['rows'][label]['psnr_vs_gt_db']:6.2f} dB  {kinds}  blocks {blocks}", flush=True)
        res["rows"] = {lb: res["rows"][lb] for lb, _, _ in ROWS if lb in res["rows"]}  # table order
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
