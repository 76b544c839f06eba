"""``lsgq eval`` / ``lsgq compare``: quantize the shipped VSR model with several recipes and
bit-widths, run it on clips, and report PSNR/SSIM, fidelity to full precision and
temporal consistency.

Clips given as a folder are taken as high-quality ground truth and degraded by the
built-in seeded pipeline; real low-quality clips (no ground truth) are judged by fidelity
and warping error only. Quantized variants are calibrated on the built-in calibration
set, never on the evaluated clips. Clips of any size are run in overlapping tiles of the
captured shape (see :mod:`lsgq_compiler.vsr.tiling`); only the first ``--frames`` frames are
used, and a clip with fewer (at least 2) is run with its frames repeated back and forth to fill
the model's window (its metrics are over its own frames).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import QuantConfig
from ..errors import user_error
from ..plan import atomic_write_text

DEFAULT_FRAMES = 8
TILE = 32  # LQ pixels; the model's tokens per tile: frames * TILE^2 / (patch volume), 4,096 for the shipped model


@dataclass
class EvalClip:
    name: str
    lq: np.ndarray  # (T, h, w, 3) uint8
    hq: np.ndarray | None  # (T, 4h, 4w, 3) uint8 or None for real clips


@dataclass
class Variant:
    tag: str
    config: QuantConfig
    qm: Any = None
    quant_time_s: float = 0.0
    info: dict = field(default_factory=dict)


def parse_variants(recipes: str, bits: str, options: dict | None = None,
                   attention_bits: int | None = None) -> list[QuantConfig]:
    """``"minmax,lsgquant"`` (or ``"all"``) x ``"w4a4,w8a8"`` -> configs (validated); ``attention_bits``
    (8) adds 8-bit attention to every variant."""
    from ..recipes import RECIPES

    names = sorted(RECIPES, key=lambda n: n == "lsgquant") if recipes.strip() == "all" else [r.strip() for r in recipes.split(",") if r.strip()]
    out = []
    for r in names:
        for b in [b.strip().lower() for b in bits.split(",") if b.strip()]:
            if not (b.startswith("w") and "a" in b):
                raise user_error(f"bad bit-width {b!r}", "use the form w4a4, w6a6, w8a8")
            try:
                wb, ab = (int(v) for v in b[1:].split("a"))
            except ValueError:
                raise user_error(f"bad bit-width {b!r}", "use the form w4a4, w6a6, w8a8") from None
            out.append(QuantConfig(recipe=r, weight_bits=wb, act_bits=ab, options=dict(options or {}),
                                   attention_bits=attention_bits))
    if not out:
        raise user_error("no recipe/bit-width combination to evaluate", "pass --recipes and --bits")
    return out


def load_eval_clips(source: str, frames: int, max_lq: int | None = None) -> list[EvalClip]:
    """``builtin`` (the built-in eval set), ``real`` (the real LQ clips) or a folder of clips."""
    from .data import ClipError, degrade_clip, eval_set, fit_clip, list_clips, read_clip, real_clips

    if source == "builtin":
        return [EvalClip(c.name, c.lq[:frames], c.hq[:frames]) for c in eval_set(frames=frames)]
    if source == "real":
        clips = []
        for c in real_clips(frames=frames):
            lq = c.lq
            if max_lq:
                lq = _center_crop(lq, max_lq)
            clips.append(EvalClip(c.name, lq, None))
        return clips
    root = Path(source)
    out = []
    for p in list_clips(root):
        try:
            raw = read_clip(p, max_frames=frames)
            # a clip shorter than --frames (>= 2) runs too: the tiler repeats its frames to fill the window
            hq = fit_clip(raw, min(frames, len(raw)), multiple=8)
        except ClipError as e:
            warnings.warn(f"skipping {p.name}: {e}", stacklevel=2)
            continue
        if max_lq:
            hq = _center_crop(hq, max_lq * 4)
        lq = degrade_clip(hq, seed=zlib.crc32(p.name.encode()))
        out.append(EvalClip(p.stem, lq, hq))
    if not out:
        raise user_error(f"no readable clip in {root}", "put one clip per entry: a folder of PNG/JPEG frames or "
                         "a video file, RGB, at least 2 frames of 64x64")
    return out


def _center_crop(clip: np.ndarray, size: int) -> np.ndarray:
    t, h, w, _ = clip.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return clip[:, y0:y0 + size, x0:x0 + size]


class VSRRunner:
    """The shipped model at one static tile shape, plus calibration inputs."""

    def __init__(self, frames: int = DEFAULT_FRAMES, tile: int = TILE, progress: bool = True) -> None:
        from .data import calibration_set
        from .models import load_tiny_vsr
        from .tiling import to_tensor

        self.vsr = load_tiny_vsr()
        self.frames, self.tile, self.progress = frames, tile, progress
        calib = calibration_set(frames=frames, size=(tile * 4, tile * 4))
        self.calib_inputs = [self.vsr.transformer_inputs(to_tensor(c.lq)) for c in calib]
        self.example_inputs = self.calib_inputs[0]

    def quantize(self, cfg: QuantConfig) -> Variant:
        from ..api import compile_quantized

        t0 = time.perf_counter()
        qm = compile_quantized(self.vsr.transformer, self.example_inputs, cfg, calib_data=self.calib_inputs,
                               progress=self.progress)
        return Variant(cfg.tag, cfg, qm, time.perf_counter() - t0, qm.info)

    @torch.no_grad()
    def upscale(self, lq: np.ndarray, transformer: Any = None) -> np.ndarray:
        from .tiling import run_tiled, to_tensor, to_uint8

        def fn(tile_lq: np.ndarray) -> np.ndarray:
            return to_uint8(self.vsr(to_tensor(tile_lq), transformer=transformer))

        return run_tiled(fn, lq, self.frames, self.tile)


def quantize_all(runner: VSRRunner, configs: list[QuantConfig]) -> list[Variant]:
    return [runner.quantize(cfg) for cfg in tqdm(configs, desc="quantizing variants", disable=not runner.progress)]


def _clip_metrics(c: EvalClip, y: np.ndarray, fp: np.ndarray | None) -> dict[str, float]:
    from .metrics import psnr_video, ssim, warp_error

    r: dict[str, float] = {"warp_error": warp_error(y)}
    if c.hq is not None:
        r["psnr"], r["ssim"] = psnr_video(c.hq, y), ssim(c.hq, y)
    if fp is not None:
        r["psnr_vs_fp"] = psnr_video(fp, y)
    return r


def evaluate(runner: VSRRunner, clips: list[EvalClip], configs: list[QuantConfig] | list[Variant],
             keep_outputs: bool = False) -> dict[str, Any]:
    """Evaluate bicubic, full precision and each config (or already quantized variant) on ``clips``."""
    return evaluate_sets(runner, {"clips": clips}, configs, keep_outputs)["clips"]


def evaluate_sets(runner: VSRRunner, sets: dict[str, list[EvalClip]], configs: list[QuantConfig] | list[Variant],
                  keep_outputs: bool = False, prior: dict[str, dict[str, Any]] | None = None,
                  on_variant: Callable[[dict[str, dict[str, Any]]], None] | None = None,
                  set_args: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate on several clip sets, quantizing each config once.

    Variants are handled one at a time (quantize, run every clip of every set, free the
    model unless ``keep_outputs`` or it was passed in quantized), so memory stays flat over
    long comparisons. ``prior``: earlier results per set (``--resume``, see :func:`resume_rows`):
    every finished row is kept, rows of this run whose recorded arguments match are not run
    again, rows whose arguments differ are recomputed (said on stderr). ``set_args``: the
    arguments that decide each set's baselines (clip source, frames, crop, clip names),
    recorded in the results as ``"args"``. ``on_variant``: called with the partial results per
    set after each variant (to checkpoint them).
    """
    from .data import bicubic_upscale

    prior = prior or {}
    per_clip: dict[str, dict[str, dict[str, dict[str, float]]]] = {src: {} for src in sets}
    outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {src: {} for src in sets}
    fp_out: dict[str, dict[str, np.ndarray]] = {src: {} for src in sets}
    for src, clips in sets.items():
        for c in tqdm(clips, desc=f"full precision ({src})", disable=not runner.progress, leave=False):
            outs = {"bicubic": bicubic_upscale(c.lq), "fp": runner.upscale(c.lq)}
            fp_out[src][c.name] = outs["fp"]
            per_clip[src][c.name] = {n: _clip_metrics(c, y, None) for n, y in outs.items()}
            if keep_outputs:
                outputs[src][c.name] = outs
    info: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    tags = [item.tag for item in configs]
    reuse: set[str] = set()
    for src in sets:  # --resume: every finished row is kept; rows whose arguments differ are recomputed
        carried, stale = resume_rows(prior.get(src, {}), (set_args or {}).get(src), configs)
        for tag, why in stale.items():
            print(f"resume: recomputing {tag} ({src}): {why}", file=sys.stderr)
        ok = set(carried) - set(stale)
        reuse = ok if src == next(iter(sets)) else reuse & ok
        for tag in carried:
            if tag not in tags and tag not in order:
                order.append(tag)  # a row of an earlier run that this run does not ask for: kept
    reuse |= {t for t in order if t not in tags}
    for tag in reuse:
        for src in sets:
            old = prior[src]
            for c in sets[src]:
                per_clip[src][c.name][tag] = old["per_clip"][c.name][tag]
        first = prior[next(iter(sets))]
        info[tag] = dict(first["variants"][tag], results=first["results"][tag], resumed=True)
    for item in tqdm(configs, desc="variants", disable=not runner.progress or len(configs) < 2):
        tag = item.tag
        order.append(tag)
        if tag in reuse:
            continue
        v = item if isinstance(item, Variant) else runner.quantize(item)
        for src, clips in sets.items():
            for c in clips:
                y = runner.upscale(c.lq, v.qm)
                per_clip[src][c.name][tag] = _clip_metrics(c, y, fp_out[src][c.name])
                if keep_outputs:
                    outputs[src][c.name][tag] = y
        s = v.qm.plan.summary()
        info[tag] = {"config": v.config.to_dict(), "timings": v.info.get("timings", {}),
                     "notes": v.info.get("notes", {}), "quant_time_s": round(v.quant_time_s, 2),
                     "avg_weight_bits": s["avg_weight_bits"], "lowrank_share": lowrank_share(v.qm.plan),
                     "variant": v}
        if not keep_outputs and not isinstance(item, Variant):
            v.qm = None  # free the quantized model
        if on_variant is not None:
            on_variant({src: dict(_summarize(runner, sets[src], per_clip[src], order, info),
                                  **({"args": set_args[src]} if set_args and src in set_args else {}))
                        for src in sets})
    res = {src: _summarize(runner, sets[src], per_clip[src], order, info) for src in sets}
    for src in sets:
        if set_args and src in set_args:
            res[src]["args"] = set_args[src]
    if keep_outputs:
        for src in sets:
            res[src]["_outputs"] = outputs[src]
            res[src]["_variants"] = [info[t]["variant"] for t in order if "variant" in info[t]]
    return res


def resume_rows(prior: dict[str, Any], set_args: dict[str, Any] | None,
                configs: list[QuantConfig] | list[Variant]) -> tuple[list[str], dict[str, str]]:
    """Which rows of an earlier ``results.json`` a resumed run keeps, and which it must recompute.

    Args:
        prior: one clip set's earlier results (``{}``: nothing to resume).
        set_args: this run's arguments that decide the baselines (``source``, ``frames``,
            ``max_lq``, ``clips``: the clip names); None skips the check.
        configs: this run's variants; a row's arguments are its ``QuantConfig`` (recipe, bits,
            options, time budget, attention bits, ...), recorded in ``variants[tag]["config"]``.

    Returns:
        ``(carried, stale)``: every finished row of ``prior`` in its order (all are kept), and
        for rows of this run whose recorded arguments differ, what differs (they are recomputed).

    Raises:
        ValueError: the earlier results were made with other baseline arguments (frames, crop,
        clips): mixing their rows with new baselines would be wrong, so the run is refused.
    """
    if not prior:
        return [], {}
    if set_args is not None:
        before = dict(prior.get("args") or {"frames": prior.get("frames"), "clips": sorted(prior.get("per_clip", {}))})
        now = {**set_args, "clips": sorted(set_args.get("clips", []))}
        before["clips"] = sorted(before.get("clips", []))
        diff = [f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in now if k in before and before[k] != now[k]]
        if diff:
            raise user_error("--resume: the earlier results were made with other arguments (" + "; ".join(diff) + ")",
                             "run with the same --clips/--frames/--max-lq, or write to a new --out (the earlier "
                             "results were left as they are)")
    variants = prior.get("variants", {})
    clips = prior.get("per_clip", {})
    carried = [t for t in variants if t in prior.get("results", {}) and all(t in r for r in clips.values())]
    stale: dict[str, str] = {}
    for item in configs:
        tag, cfg = item.tag, item.config if isinstance(item, Variant) else item
        if tag not in carried:
            continue
        old, new = variants[tag].get("config", {}), json.loads(json.dumps(cfg.to_dict()))
        diff = [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]
        if diff:
            stale[tag] = "arguments differ: " + "; ".join(diff)
    return carried, stale


def lowrank_share(plan: Any) -> float:
    """Parameters of the full-precision low-rank branches over the quantized layers' weights."""
    q = plan.quantized_layers()
    dense = sum(s.in_features * s.out_features for s in q)
    return round(sum(s.rank * (s.in_features + s.out_features) for s in q) / dense, 5) if dense else 0.0


def _summarize(runner: VSRRunner, clips: list[EvalClip], per_clip: dict, order: list[str],
               info: dict[str, dict[str, Any]]) -> dict[str, Any]:
    done = [t for t in order if t in info]
    names = ["bicubic", "fp"] + done
    first = per_clip[clips[0].name]
    results = {n: {k: float(np.mean([per_clip[c.name][n][k] for c in clips])) for k in first[n]} for n in names}
    for t in done:
        if info[t].get("resumed"):
            for k in ("quant_time_s", "avg_weight_bits", "lowrank_share"):
                if k in info[t]["results"]:
                    results[t][k] = info[t]["results"][k]
            continue
        results[t]["quant_time_s"] = info[t]["quant_time_s"]
        results[t]["avg_weight_bits"] = info[t]["avg_weight_bits"]
        if info[t]["lowrank_share"]:
            results[t]["lowrank_share"] = info[t]["lowrank_share"]
    return {"clips": len(clips), "ground_truth": all(c.hq is not None for c in clips), "frames": runner.frames,
            "tiling": f"{runner.frames} frames x {runner.tile}x{runner.tile} LQ tiles, overlap 8, ramp-blended",
            "results": results, "per_clip": {c.name: per_clip[c.name] for c in clips},
            "variants": {t: {k: info[t][k] for k in ("config", "timings", "notes")} for t in done}}


def format_table(res: dict[str, Any]) -> str:
    """Markdown table: rows = variants, columns = metrics."""
    cols = ["psnr", "ssim", "psnr_vs_fp", "warp_error", "quant_time_s"]
    present = [c for c in cols if any(c in r for r in res["results"].values())]
    head = "| variant | " + " | ".join(present) + " |\n|---|" + "---|" * len(present) + "\n"
    rows = []
    for name, r in res["results"].items():
        cells = []
        for c in present:
            v = r.get(c)
            cells.append("-" if v is None else ("inf" if isinstance(v, float) and math.isinf(v)
                                                else f"{v:.4f}" if c in ("ssim", "warp_error") else f"{v:.2f}"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def add_eval_arguments(p: argparse.ArgumentParser, compare: bool = False) -> None:
    p.add_argument("--clips", default="builtin",
                   help="folder of clips (subfolders of frames or video files), taken as ground truth; "
                        "'builtin' = the built-in eval set, 'real' = the real low-quality clips (no ground truth); "
                        "several, comma-separated, share each quantized variant (e.g. builtin,real)")
    p.add_argument("--recipes", default="minmax,lsgquant" if compare else "minmax",
                   help="comma-separated recipe names (see `lsgq recipes`), or 'all'")
    p.add_argument("--bits", default="w8a8,w6a6,w4a4" if compare else "w4a4,w8a8")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per clip (the first N)")
    p.add_argument("--max-lq", type=int, default=None,
                   help="center-crop LQ frames to at most this size (faster; default: full frames, tiled)")
    p.add_argument("--json", default=None, help="write the results JSON here")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe option (JSON value), e.g. --option full_iters=100")
    p.add_argument("--attention-bits", type=int, choices=[8], default=None,
                   help="8-bit attention (INT8 Q.K^T) in every variant, layer by layer by measured SQNR "
                        "(variant names get -attn8)")
    p.add_argument("--iters", type=int, default=None, metavar="N",
                   help="the same iteration cap for every training stage of every variant: at most N "
                        "iterations per layer (end-to-end stages: N in all); default: each recipe's own budgets")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="safety cap only: wall-time limit of each variant's training stages; results then depend "
                        "on machine speed, and where it fires the plan and summary say so (default: no cap)")
    if compare:
        p.add_argument("--out", default="compare_out", help="folder for table.md, results.json, chart.png "
                       "(one subfolder per clip set when several are given)")
        p.add_argument("--resume", action="store_true",
                       help="keep the variants already in --out's results.json and run only the missing ones")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(compare=compare)


def _parse_options(items: list[str]) -> dict:
    opts = {}
    for it in items:
        if "=" not in it:
            raise user_error(f"bad --option {it!r}", "use KEY=VALUE, e.g. --option full_iters=100")
        k, v = it.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return opts


def _set_name(source: str) -> str:
    return source if source in ("builtin", "real") else (Path(source).name or "clips")


def check_output_paths(json_file: str | None = None, folder: str | None = None) -> None:
    """Refuse, before any work, output paths that cannot be written: a ``--json`` that is a folder
    or lies under a file, an ``--out`` that is a file or lies under one."""
    for p, kind in ((json_file, "--json"), (folder, "--out")):
        if p is None:
            continue
        path = Path(p)
        if kind == "--json" and path.is_dir():
            raise user_error(f"{kind} {p} is a folder", "give a file path for the JSON results")
        if kind == "--out" and path.exists() and not path.is_dir():
            raise user_error(f"{kind} {p} is a file", "give a folder path (it is created if needed)")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise user_error(f"{kind} {p} lies under {parent}, which is a file", "choose another path")
                if not os.access(parent, os.W_OK):
                    raise user_error(f"{kind} {p}: {parent} is not writable", "choose a writable path")
                break


def run_eval_cli(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise user_error(f"--frames {args.frames} is too small", "use at least 2 frames")
    if args.time_budget is not None and args.time_budget <= 0:
        raise user_error(f"--time-budget {args.time_budget} must be positive", "give seconds, e.g. --time-budget 60")
    check_output_paths(json_file=args.json, folder=getattr(args, "out", None) if getattr(args, "compare", False) else None)
    configs = parse_variants(args.recipes, args.bits, _parse_options(args.option), getattr(args, "attention_bits", None))
    if args.time_budget is not None:
        configs = [dataclasses.replace(c, time_budget_s=args.time_budget) for c in configs]
    if args.iters is not None:
        if args.iters < 0:
            raise user_error(f"--iters {args.iters} must be >= 0", "give an iteration count, e.g. --iters 30")
        configs = [dataclasses.replace(c, options={**c.options, "train_iters": args.iters}) for c in configs]
    sources = [c.strip() for c in args.clips.split(",") if c.strip()]
    if not sources:
        raise user_error("--clips is empty", "use builtin, real, a folder, or several comma-separated")
    sets = {_set_name(src): load_eval_clips(src, args.frames, args.max_lq) for src in sources}
    if len(sets) != len(sources):
        raise user_error(f"--clips {args.clips!r} names the same set twice", "give each clip set once")
    compare = getattr(args, "compare", False)
    outdir = lambda name: Path(args.out) / name if len(sets) > 1 else Path(args.out)  # noqa: E731
    prior = {}
    if compare and getattr(args, "resume", False):
        for name in sets:
            f = outdir(name) / "results.json"
            if f.exists():
                try:
                    prior[name] = json.loads(f.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise user_error(f"--resume: {f} is not valid JSON ({e})",
                                     "fix or remove it, or write to a new --out") from None
    set_args = {name: {"source": src, "frames": args.frames, "max_lq": args.max_lq,
                       "clips": [c.name for c in sets[name]]} for name, src in zip(sets, sources)}
    for name in prior:
        resume_rows(prior[name], set_args[name], configs)  # refuse before any work
    runner = VSRRunner(frames=args.frames, progress=not args.no_progress)

    def checkpoint(partial: dict[str, dict[str, Any]]) -> None:
        if compare:
            for name, res in partial.items():
                outdir(name).mkdir(parents=True, exist_ok=True)
                atomic_write_text(outdir(name) / "results.json", json.dumps(res, indent=1))

    all_res = evaluate_sets(runner, sets, configs, prior=prior, on_variant=checkpoint, set_args=set_args)
    for (name, res), src in zip(all_res.items(), sources):
        print(f"{res['clips']} clips from {src} ({res['tiling']})")
        print(format_table(res))
        if compare:
            from ..report import write_compare

            write_compare(outdir(name), res, args)
            print(f"wrote {outdir(name)}/table.md, results.json, chart.png")
    if args.json:
        out = all_res[next(iter(all_res))] if len(all_res) == 1 else all_res
        atomic_write_text(Path(args.json), json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0
