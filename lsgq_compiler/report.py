"""Figures and tables: the plan's sensitivity/bits plot, the comparison table and chart."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .plan import Plan, atomic_write_text


def _savefig(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def sensitivity_label(plan: Plan) -> str:
    """The sensitivity score the plan's layers actually carry, read from the plan: the name in
    ``extra["scores"]`` equal to every layer's ``sensitivity`` (Sensitivity pass), the metrics
    of a metric-decoupled sensitivity, or ``"none"``."""
    layers = [s for s in plan.layers.values() if s.quantized and s.sensitivity is not None]
    if not layers:
        return "none"
    if all("scores" in s.extra for s in layers):
        names = [k for k in layers[0].extra["scores"]
                 if all(s.extra["scores"].get(k) == s.sensitivity for s in layers)]
        if names:
            return names[0]
    if all("metric_scores" in s.extra for s in layers):
        return "metric-decoupled: " + "/".join(sorted(layers[0].extra["metric_scores"]))
    return str(plan.config.get("options", {}).get("sensitivity", "unnamed"))


def plan_formats(plan: Plan) -> str:
    """Formats actually used, e.g. ``58 x W4A4 (weights asym. row, acts draq token), 2 x FP``."""
    counts: dict[str, int] = {}
    for s in plan.layers.values():
        if not s.quantized:
            key = "FP"
        else:
            w = (f"{'sym.' if s.weight_symmetric else 'asym.'} {s.weight_granularity}"
                 + (f" {s.group_size}" if s.group_size else "")) if s.weight_bits else "FP"
            a = f"{s.act_quantizer} {s.act_granularity}" if s.act_bits else "FP"
            key = f"{s.fmt} (weights {w}, acts {a})"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def plan_training(plan: Plan) -> str:
    """Training budgets assigned and spent, in iterations, read from the layers' plan entries."""
    q = [s for s in plan.layers.values() if s.quantized]
    tiers: dict[str, set[int]] = {}
    for s in q:
        if s.tier is not None:
            tiers.setdefault(s.tier, set()).add(s.train_iters)
    parts = [f"{t}: {len([s for s in q if s.tier == t])} layers x " + "/".join(str(i) for i in sorted(its))
             + " iters" for t, its in sorted(tiers.items())]
    total = plan.config.get("options", {}).get("qao_iters")
    if total is not None:
        parts.append(f"QAO total {total} iters")
    spent = {}
    for s in q:
        for k, v in s.extra.items():
            if isinstance(v, dict) and "iters" in v and (k == "qao" or k.startswith("train:")):
                spent[k] = spent.get(k, 0) + int(v["iters"])
    parts += [f"{k} spent {n} iters" for k, n in sorted(spent.items())] or ["no training iterations"]
    cap = plan.config.get("time_budget_s")
    parts.append(f"time cap {cap:g} s" if cap else "no time cap")
    return "; ".join(parts)


def time_cap_events(plan: Plan) -> list[str]:
    """Where the wall-clock safety cap (``config.time_budget_s``) fired, read from the layers'
    plan entries: per stage, the layer it stopped and after how many iterations, and how many
    layers it skipped. Empty when it did not fire (the result is then iteration-determined)."""
    stages: dict[str, dict] = {}
    for s in plan.layers.values():
        for k, v in s.extra.items():
            if not isinstance(v, dict):
                continue
            if v.get("stopped") == "time cap":
                stages.setdefault(k, {"skipped": 0, "stopped": []})["stopped"].append(
                    f"{s.module_path} after {v.get('iters', '?')} of {s.train_iters or '?'} iters")
            elif v.get("skipped") == "time cap":
                stages.setdefault(k, {"skipped": 0, "stopped": []})["skipped"] += 1
        if s.extra.get("metric_scores_from") == "median (time cap)":
            stages.setdefault("metric_sensitivity", {"skipped": 0, "stopped": []})["skipped"] += 1
    cap = plan.config.get("time_budget_s")
    return [f"time cap ({cap:g} s) fired in {k}: " + ", ".join(v["stopped"] + [f"{v['skipped']} layers skipped"])
            for k, v in sorted(stages.items())]


def plot_plan(plan: Plan, path: Path, title: str = "") -> Path:
    """Per-layer sensitivity (log scale, bars coloured by VOLTS tier) and weight bits (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [s for s in plan.layers.values() if s.quantized]
    names = [s.module_path.replace("blocks.", "b") for s in layers]
    sens = np.array([s.sensitivity if s.sensitivity is not None else np.nan for s in layers], dtype=float)
    colours = {"frozen": "#9ecae1", "light": "#fdae6b", "full": "#e6550d", None: "#bbbbbb"}
    fig, ax = plt.subplots(figsize=(max(8, 0.16 * len(layers)), 4.2))
    ax.bar(range(len(layers)), np.nan_to_num(sens, nan=0.0), color=[colours.get(s.tier, "#bbb") for s in layers])
    if np.nanmax(np.nan_to_num(sens, nan=0)) > 0:
        ax.set_yscale("log")
    ax.set_ylabel(f"sensitivity ({sensitivity_label(plan)})")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax2 = ax.twinx()
    ax2.plot(range(len(layers)), [s.weight_bits or 16 for s in layers], "k.-", lw=1, label="weight bits")
    ax2.plot(range(len(layers)), [s.act_bits or 16 for s in layers], "g--", lw=0.8, label="activation bits")
    ax2.set_ylabel("bits")
    ax2.set_ylim(0, 9)
    ax2.legend(loc="upper right", fontsize=7)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=t) for t, c in colours.items() if t], loc="upper left", fontsize=7,
              title="VOLTS tier", title_fontsize=7)
    ax.set_title(title or f"{plan.model_class}: per-layer {sensitivity_label(plan)} sensitivity and bits")
    _savefig(fig, path)
    plt.close(fig)
    return path


def table1_markdown(res: dict[str, Any]) -> str:
    """LSGQuant Table-1 layout: rows bits x method, columns PSNR, SSIM, fidelity, warp error, time."""
    r = res["results"]
    gt = res.get("ground_truth", True)
    share = any("lowrank_share" in m for m in r.values())
    cols = (["PSNR ↑", "SSIM ↑"] if gt else []) + ["PSNR vs FP ↑", "warp error ↓", "quant. time (s)"] + (
        ["low-rank share"] if share else [])

    lines = ["| bits | method | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]

    def row(bits: str, name: str, m: dict) -> str:
        cells = ([f"{m['psnr']:.2f}", f"{m['ssim']:.4f}"] if gt else []) + [
            f"{m['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in m else "-", f"{m['warp_error']:.4f}",
            f"{m['quant_time_s']:.1f}" if "quant_time_s" in m else "-"] + (
            [f"{100 * m['lowrank_share']:.1f}%" if m.get("lowrank_share") else "-"] if share else [])
        return f"| {bits} | {name} | " + " | ".join(cells) + " |"

    lines.append(row("FP32", "full precision", r["fp"]))
    lines.append(row("-", "bicubic", r["bicubic"]))
    tags = [t for t in r if t not in ("fp", "bicubic")]
    for bits in sorted({t.rsplit("-", 1)[1] for t in tags}, key=lambda b: -int(b[1:].split("a")[0])):
        for t in tags:
            if t.endswith("-" + bits):
                lines.append(row(bits.upper(), t.rsplit("-", 1)[0], r[t]))
    notes = []
    for t, v in res.get("variants", {}).items():
        cfg, cap = v.get("config", {}), v.get("notes", {}).get("time_cap")
        budget = "iterations: " + (f"--iters {cfg['options']['train_iters']}" if "train_iters" in cfg.get("options", {})
                                   else "the recipe's own")
        fired = "; ".join(f"time cap {cap['time_budget_s']:g} s fired in {e['stage']}"
                          + (f" at {e['layer']} after {e['iters']} iters" if e["layer"] else "")
                          + f", {e['skipped']} layers skipped" for e in cap["stages"]) if cap else ""
        notes.append(f"- {t}: {budget}" + (f"; {fired}" if fired else ""))
    if notes:
        lines += ["", "Training budgets:", *notes]
    return "\n".join(lines) + "\n"


def write_compare(out: Path, res: dict[str, Any], args: Any = None) -> None:
    """table.md, results.json and chart.png (PSNR or fidelity per method and bits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in res.items() if not k.startswith("_")}
    atomic_write_text(out / "results.json", json.dumps(clean, indent=1))
    atomic_write_text(out / "table.md", table1_markdown(res))
    r = res["results"]
    tags = [t for t in r if t not in ("fp", "bicubic")]
    methods = list(dict.fromkeys(t.rsplit("-", 1)[0] for t in tags))  # the order they were run in
    bits = sorted({t.rsplit("-", 1)[1] for t in tags}, key=lambda b: -int(b[1:].split("a")[0]))
    keys = (["psnr"] if res.get("ground_truth", True) else []) + ["psnr_vs_fp"]
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: max(len(methods), 1)]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.0 + 2.2 * len(bits) * len(keys), 3.8), squeeze=False)
    width = 0.8 / max(len(methods), 1)
    for ax, key in zip(axes[0], keys):
        for i, m in enumerate(methods):
            vals = [r.get(f"{m}-{b}", {}).get(key, np.nan) for b in bits]
            ax.bar(np.arange(len(bits)) + i * width - 0.4 + width / 2, vals, width, label=m, color=colors[i],
                   edgecolor="k" if m == "lsgquant" else "none", linewidth=0.8)
        if key == "psnr":
            ax.axhline(r["fp"]["psnr"], color="k", ls="--", lw=1, label="full precision")
            ax.axhline(r["bicubic"]["psnr"], color="gray", ls=":", lw=1, label="bicubic")
            lo = min(v.get("psnr", 99) for v in r.values())
            ax.set_ylim(lo - 0.5, r["fp"]["psnr"] + 0.3)
            ax.set_ylabel("PSNR vs ground truth (dB)")
        else:
            vals = [v["psnr_vs_fp"] for v in r.values() if np.isfinite(v.get("psnr_vs_fp", np.nan))]
            if vals:
                ax.set_ylim(min(vals) - 3, max(vals) + 2)
            ax.set_ylabel("PSNR vs full precision (dB)")
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels([b.upper() for b in bits])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{res['clips']} clips" + ("" if res.get("ground_truth", True) else " (no ground truth)"))
    fig.tight_layout()
    _savefig(fig, out / "chart.png")
    plt.close(fig)


def side_by_side(panels: list[tuple[str, np.ndarray]], path: Path, frame: int = 0) -> Path:
    """One frame of several clips ``(T, H, W, 3)`` side by side with labels (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (label, clip) in zip(np.atleast_1d(axes), panels):
        ax.imshow(clip[min(frame, len(clip) - 1)], interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    _savefig(fig, path)
    plt.close(fig)
    return path
