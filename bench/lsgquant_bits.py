"""Does LSGQuant close the W4A4 gap to ViDiT-Q given ViDiT-Q's weight widths? (shipped model, CPU)

    python bench/lsgquant_bits.py [--threads 2] [--out bench/results/lsgquant_bits.json]

In the 11-recipe comparison (``lsgq compare ... --iters 100``) ViDiT-Q is closer to full precision
than LSGQuant at W4A4. One difference: ViDiT-Q's allocation picks each layer's weight width in
{3, 4, 5} within the 4-bit average, LSGQuant's among ``QuantConfig.allowed_bits`` = {4, 6, 8}, which
under a 4-bit budget leaves every layer at 4. This runs, in one process on the same clips, the
comparison's three rows: LSGQuant with {4, 6, 8}, LSGQuant with {3, 4, 5}, ViDiT-Q; all W4A4 with
every training stage capped at 100 iterations per layer (``train_iters``), on the built-in eval
clips. Writes fidelity (PSNR vs full precision), PSNR vs ground truth and each plan's weight widths.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/lsgquant_bits.json")
    args = ap.parse_args()
    from lsgq_compiler.quiet import quiet

    quiet()
    from lsgq_compiler import QuantConfig
    from lsgq_compiler.plan import atomic_write_text
    from lsgq_compiler.vsr.evaluate import VSRRunner, evaluate, load_eval_clips

    torch.set_num_threads(args.threads)
    runner = VSRRunner(progress=False)
    clips = load_eval_clips("builtin", runner.frames)
    opts = {"train_iters": 100}
    rows = {"lsgquant, bits {4, 6, 8}": QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, options=opts),
            "lsgquant, bits {3, 4, 5}": QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4,
                                                    allowed_bits=(3, 4, 5), options=opts),
            "viditq": QuantConfig(recipe="viditq", weight_bits=4, act_bits=4, options=opts)}
    out: dict = {"command": "python bench/lsgquant_bits.py --threads %d" % args.threads,
                 "run": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
                 "threads": args.threads, "clips": len(clips), "rows": {}}
    for label, cfg in rows.items():
        t0 = time.perf_counter()
        v = runner.quantize(cfg)
        widths = Counter(f"W{s.weight_bits}A{s.act_bits}" for s in v.qm.plan.quantized_layers())
        res = evaluate(runner, clips, [v])
        r = res["results"][v.tag]
        out["rows"][label] = {"fidelity_psnr_vs_fp_db": round(r["psnr_vs_fp"], 3), "psnr_vs_gt_db": round(r["psnr"], 3),
                              "ssim": round(r["ssim"], 4), "formats": dict(sorted(widths.items())),
                              "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{label:<26} fidelity {r['psnr_vs_fp']:.2f} dB  vs GT {r['psnr']:.3f}  {dict(widths)}", flush=True)
        atomic_write_text(Path(args.out), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
