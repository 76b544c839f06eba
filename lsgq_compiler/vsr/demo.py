"""``lsgq demo`` (behind ``make demo``): quantize the shipped tiny VSR model at W4A4 and W8A8
with the best available recipe, evaluate on the built-in eval clips and the real clips,
and write a report folder."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..config import QuantConfig
from ..plan import atomic_write_text
from ..recipes import RECIPES


#: QAO iterations (all layers together) of the W4A4 and W8A8 variants: on an idle 2-core
#: machine the former 150 s / 50 s budgets trained about 1,000 / 340 iterations.
DEMO_QAO_ITERS = (1000, 340)

#: Options of the LSGQuant variants beyond the QAO budget. Two gradient probes per observed
#: batch instead of the recipe's four: with the shipped p211-d256 model (4,096 tokens per
#: tile) CPU flash-attention backward is 45% of the demo's time, and on this model two probes
#: gave 43.81 / 59.71 dB W4A4 / W8A8 fidelity against 43.77 / 59.71 with four, in 408 s
#: instead of 611 s (bench/results/tiny_vsr_train_2026-12-03b/demo_candidate*_summary.md).
DEMO_OPTIONS: dict = {"probes": 2}


def run_demo(out: str | Path = "demo_out", frames: int = 8, quick: bool = False) -> dict:
    from .evaluate import VSRRunner, evaluate, format_table, load_eval_clips, quantize_all
    from ..report import plan_formats, plan_training, plot_plan, sensitivity_label, side_by_side, time_cap_events

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best = "lsgquant" if "lsgquant" in RECIPES else "minmax"
    print(f"[demo] shipped model: tiny one-step VSR (diffusers WanTransformer3DModel); best recipe: {best}")
    runner = VSRRunner(frames=frames)
    # training budgets in iterations (reproducible on any machine), sized like the former
    # 150 s / 50 s wall-clock budgets on 2 CPU cores: QAO iterations for all layers together
    qao = (400, 130) if quick else DEMO_QAO_ITERS
    configs = [QuantConfig(recipe=best, weight_bits=4, act_bits=4, options={**DEMO_OPTIONS, "qao_iters": qao[0]}),
               QuantConfig(recipe=best, weight_bits=8, act_bits=8, options={**DEMO_OPTIONS, "qao_iters": qao[1]})]
    if best != "minmax":
        configs.append(QuantConfig(recipe="minmax", weight_bits=4, act_bits=4))
    variants = quantize_all(runner, configs)
    builtin = load_eval_clips("builtin", frames)
    if quick:
        builtin = builtin[:2]
    res_eval = evaluate(runner, builtin, variants, keep_outputs=True)
    real = load_eval_clips("real", frames, max_lq=runner.tile)
    if quick:
        real = real[:2]
    res_real = evaluate(runner, real, variants, keep_outputs=True)

    w4 = variants[0]
    w4.qm.plan.save(out / f"plan_{w4.tag}.json")
    plot_plan(w4.qm.plan, out / "plan_sensitivity_bits.png",
              title=f"{w4.tag}: per-layer {sensitivity_label(w4.qm.plan)} sensitivity, VOLTS tier and bits")
    strips = []
    for res, kind in ((res_eval, "eval"), (res_real, "real")):
        for name in list(res["_outputs"])[:3]:
            o = res["_outputs"][name]
            clip = next(c for c in (builtin if kind == "eval" else real) if c.name == name)
            lq_big = np.repeat(np.repeat(clip.lq, 4, axis=1), 4, axis=2)
            panels = [("low quality", lq_big), ("bicubic", o["bicubic"]), ("full precision", o["fp"])]
            panels += [(v.tag, o[v.tag]) for v in variants[:2]]
            if clip.hq is not None:
                panels.append(("ground truth", clip.hq))
            strips.append(side_by_side(panels, out / f"strip_{kind}_{name}.png").name)
    summary = ["# lsgq demo", "",
               f"Model: the shipped tiny one-step VSR transformer; clips of {frames} frames "
               f"({res_eval['tiling']}).", "",
               f"## Built-in eval clips ({res_eval['clips']}, degraded by the seeded pipeline)", "",
               format_table(res_eval), f"## Real low-quality clips ({res_real['clips']}, centre {runner.tile}x"
               f"{runner.tile} LQ crop, no ground truth)", "", format_table(res_real),
               "## What was used (read from each plan)", "",
               *[line for v in variants for line in (
                   f"- {v.tag}: sensitivity {sensitivity_label(v.qm.plan)}; formats {plan_formats(v.qm.plan)}; "
                   f"training {plan_training(v.qm.plan)}",
                   *[f"  - {e}" for e in time_cap_events(v.qm.plan)])], "",
               "## Files", "", f"- plan: plan_{w4.tag}.json; plot: plan_sensitivity_bits.png",
               *[f"- {s}" for s in strips], "", f"Wall time: {time.perf_counter() - t0:.0f} s", ""]
    atomic_write_text(out / "summary.md", "\n".join(summary))
    clean = {"eval": {k: v for k, v in res_eval.items() if not k.startswith("_")},
             "real": {k: v for k, v in res_real.items() if not k.startswith("_")},
             "wall_time_s": time.perf_counter() - t0}
    atomic_write_text(out / "results.json", json.dumps(clean, indent=1))
    print("\n".join(summary))
    print(f"[demo] wrote {out}/ (summary.md, results.json, plan, plot, strips)")
    return clean
