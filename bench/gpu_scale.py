"""Real scale on one GPU: DOVE-sized CogVideoX1.5-5B and Wan2.1-1.3B transformers (random bf16 weights).

    python bench/gpu_scale.py --part speed --model cogvideox-5b   # latency/memory/size/fidelity per variant
    python bench/gpu_scale.py --part speed --model wan-1.3b
    python bench/gpu_scale.py --part calib                        # LSGQuant pipeline cost per stage on the 5B
    python bench/gpu_scale.py --part calib --model wan-14b        # the same on Wan2.1-14B (14,040 tokens)
    python bench/gpu_scale.py --small ...                         # tiny configs: a CPU/GPU smoke test

Each part writes ``bench/results/gpu_scale_<part>_<model>.json`` (or under ``--out``) with the GPU named.
Variants: bf16 (torch.compile), W8A8 int8 (torchao), W8A8 FP8 rowwise (torchao), FP8 linears + 8-bit attention
(lsgq::int8_attention, our Triton kernel), 8-bit attention alone, 4-bit weights + 8-bit activations (torchao,
where a kernel exists). Quality is fidelity to the bf16 output (random weights: no image quality to judge).
Linears in the default keep-fp set (embeddings, final projection) stay bf16, as in compile_quantized.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lsgq_compiler.config import DEFAULT_KEEP_FP

CONFIGS = {
    # CogVideoX1.5-5B (DOVE): 42 blocks, 48 heads x 64 = 3072 wide, patch 2x2x2, text 4096 x 226 tokens
    "cogvideox-5b": dict(cls="CogVideoXTransformer3DModel", cfg=dict(
        num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
        text_embed_dim=4096, num_layers=42, patch_size=2, patch_size_t=2, sample_height=96, sample_width=170,
        sample_frames=81, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False), out_hw=(720, 1280), frames=33),
    # Wan2.1-1.3B: dim 1536 = 12 heads x 128, FFN 8960, 30 layers, patch (1, 2, 2); 480p is its native size
    "wan-1.3b": dict(cls="WanTransformer3DModel", cfg=dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30), out_hw=(480, 832), frames=33),
    # Wan2.1-14B: dim 5120 = 40 heads x 128, FFN 13824, 40 layers; 480p x 33 frames = 14,040 video tokens
    "wan-14b": dict(cls="WanTransformer3DModel", cfg=dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40), out_hw=(480, 832), frames=33),
}
SMALL = {
    "cogvideox-5b": dict(num_attention_heads=4, attention_head_dim=64, num_layers=2, text_embed_dim=64),
    "wan-1.3b": dict(num_attention_heads=2, attention_head_dim=128, ffn_dim=512, num_layers=2, text_dim=64),
    "wan-14b": dict(num_attention_heads=2, attention_head_dim=128, ffn_dim=512, num_layers=2, text_dim=64),
}


def build(name: str, small: bool, device: str) -> tuple[nn.Module, dict, int]:
    import diffusers

    spec = CONFIGS[name]
    cfg = dict(spec["cfg"], **(SMALL[name] if small else {}))
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(diffusers, spec["cls"])(**cfg).to(torch.bfloat16).eval()
    h, w = spec["out_hw"] if not small else (128, 128)
    frames = spec["frames"] if not small else 9
    lt, lh, lw = (frames - 1) // 4 + 1, h // 8, w // 8  # VAE: 4x temporal, 8x spatial
    g = torch.Generator(device).manual_seed(1)
    text_dim = cfg.get("text_embed_dim", cfg.get("text_dim"))
    if "CogVideoX" in spec["cls"]:
        lt += lt % 2  # patch_size_t = 2: the pipeline pads one latent frame
        x = torch.randn(1, lt, 16, lh, lw, generator=g, device=device, dtype=torch.bfloat16)
        tokens = (lt // 2) * (lh // 2) * (lw // 2)
        theta = torch.rand(tokens, cfg["attention_head_dim"], generator=g, device=device) * 6.28
        inputs = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 226, text_dim, generator=g, device=device,
                                                                        dtype=torch.bfloat16),
                      timestep=torch.tensor([399], device=device), image_rotary_emb=(theta.cos(), theta.sin()))
    else:
        x = torch.randn(1, 16, lt, lh, lw, generator=g, device=device, dtype=torch.bfloat16)
        tokens = lt * (lh // 2) * (lw // 2)
        inputs = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 226 if not small else 16, text_dim,
                                                                        generator=g, device=device,
                                                                        dtype=torch.bfloat16),
                      timestep=torch.tensor([399], device=device))
    return model, inputs, tokens


def keep_fp(fqn: str) -> bool:
    return any(f in fqn for f in DEFAULT_KEEP_FP)


def linear_filter(m: nn.Module, fqn: str) -> bool:
    return isinstance(m, nn.Linear) and not keep_fp(fqn)


@contextlib.contextmanager
def int8_attention_override(min_kv: int = 64):
    """Route eligible F.scaled_dot_product_attention calls to lsgq::int8_attention (what
    passes/attention.py does on exported graphs), for eager/torch.compile models."""
    import lsgq_compiler.kernels.attention  # noqa: F401

    orig = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is None and not dropout_p and not is_causal and not enable_gqa and key.shape[-2] >= min_kv:
            return torch.ops.lsgq.int8_attention(query, key, value, scale or query.shape[-1] ** -0.5, True)
        return orig(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


def torchao_config(kind: str):
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig,
                                      Int8DynamicActivationInt8WeightConfig, PerRow)

    if kind == "int8":
        return Int8DynamicActivationInt8WeightConfig()
    if kind == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    if kind == "w4a8":
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup

        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(128))
    raise ValueError(kind)


def checkpoint_bytes(model: nn.Module, weight_bytes: float, group: int | None = None) -> int:
    """Weights of quantized linears at ``weight_bytes`` per element + per-row (or group) fp32 scales;
    everything else bf16."""
    total = 0
    for fqn, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if isinstance(m, nn.Linear) and pname == "weight" and not keep_fp(fqn):
                n, k = p.shape
                total += int(n * k * weight_bytes) + 4 * n * (k // group if group else 1)
            else:
                total += p.numel() * 2
    return total


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return 10 * math.log10(ref.pow(2).sum().item() / max((ref - out).pow(2).sum().item(), 1e-30))


def timed(fn, iters: int, device: str) -> list[float]:
    times = []
    for _ in range(iters):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def op_breakdown(fn, device: str) -> dict[str, float]:
    """GPU time (ms) per category for one call: linears (GEMMs), attention, the rest."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    cats = {"linear_gemm": 0.0, "attention": 0.0, "other": 0.0}
    for e in prof.key_averages():
        t = (e.device_time_total if device == "cuda" else e.self_cpu_time_total) / 1e3
        if t <= 0 or (device == "cuda" and e.device_type.name != "CUDA"):
            continue
        n = e.key.lower()
        if any(s in n for s in ("attn", "flash", "fmha", "sdpa", "attention", "softmax")):
            cats["attention"] += t
        elif any(s in n for s in ("gemm", "matmul", "mm_", "cutlass", "xmma", "sm90", "scaled_mm", "_int_mm", "addmm",
                                  "aten::mm", "linear")):
            cats["linear_gemm"] += t
        else:
            cats["other"] += t
    return {k: round(v, 2) for k, v in cats.items()}


def layer_fidelity(model: nn.Module, qmodel: nn.Module, inputs: dict, n_layers: int = 6) -> dict[str, float]:
    """SQNR of the first ``n_layers`` quantized linears' outputs (same inputs) vs bf16."""
    outs: dict[str, list] = {}
    names = [f for f, m in model.named_modules() if linear_filter(m, f)][:: max(1, 50)][:n_layers]
    hooks = []
    for tag, mod in (("ref", model), ("q", qmodel)):
        for f in names:
            sub = mod.get_submodule(f)
            hooks.append(sub.register_forward_hook(lambda m, i, o, f=f, tag=tag: outs.setdefault(f, {}).update(
                {tag: (i[0].detach(), o.detach())})))
    with torch.no_grad():
        model(**inputs, return_dict=False)
    # feed the quantized layers the reference inputs: layer-level fidelity, not accumulated error
    res = {}
    for f in names:
        x, y = outs[f]["ref"]
        with torch.no_grad():
            res[f] = round(sqnr(y.float(), qmodel.get_submodule(f)(x).float()), 2)
    for h in hooks:
        h.remove()
    return res


KERNEL_NOTES = {
    "fp8": "real: FP8 rowwise torch._scaled_mm",
    "int8": "real: int8 torch._int_mm",
    "w4a8": "simulated compute: torchao 0.18 stores int4 values unpacked in int8 (UNPACKED_TO_INT8) and runs "
            "dequantize + bf16 GEMM; no W4A8 GEMM for CUDA in this torchao (gemlite's is a separate package)",
    "lsgquant": "simulated: no W4A4 GEMM on Hopper; fake-quant in eager PyTorch",
}


def small_m_linears(model: nn.Module, inputs: dict, max_rows: int = 16) -> set[str]:
    """Linears whose input has at most ``max_rows`` rows here (e.g. AdaLN projections of the
    timestep embedding): torch._int_mm needs more than 16, so int8 leaves them in bf16."""
    rows: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, f=f: rows.__setitem__(f, i[0].numel() // i[0].shape[-1]))
             for f, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(**inputs, return_dict=False)
    for h in hooks:
        h.remove()
    return {f for f, r in rows.items() if r <= max_rows}


class _Positional(nn.Module):
    """A QuantizedModel called like the diffusers model (``return_dict=False`` -> tuple)."""

    def __init__(self, qm: nn.Module) -> None:
        super().__init__()
        self.qm = qm

    def forward(self, return_dict: bool = False, **kw) -> tuple[torch.Tensor]:
        return (self.qm(**kw),)


def lsgquant_lowered(model: nn.Module, inputs: dict, device: str) -> tuple[nn.Module, dict]:
    """The LSGQuant W4A4 plan (one calibration clip, short QAO) lowered by the torchao backend;
    returns the callable (eager: layers without a kernel run as fake-quant) and its kernel counts."""
    from lsgq_compiler import QuantConfig, compile_quantized
    from lsgq_compiler.backends.torchao import lower_torchao

    cfg = QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4,
                      options={"observe_tokens": 128, "light_iters": 5, "full_iters": 10})
    qm = lower_torchao(compile_quantized(model, inputs, cfg, calib_data=[inputs], progress=False), device)
    rows = [r for r in qm.report() if r["format"] not in ("fp", "FP", "-")]
    real = sum(bool(r["real_kernel"]) for r in rows)
    kernels = sorted({str(r.get("kernel")) for r in rows})
    return _Positional(qm), {"linears": f"W4A4 LSGQuant plan: {real}/{len(rows)} layers on a real kernel",
                             "kernels": kernels, "compiled": "eager (simulated layers are fake-quant)"}


def run_speed(args, device: str, gpu: str = "none") -> dict:
    from torchao.quantization import quantize_

    results: dict[str, dict] = {}
    base, inputs, tokens = build(args.model, args.small, device)
    n_params = sum(p.numel() for p in base.parameters())
    with torch.no_grad():
        ref = base(**inputs, return_dict=False)[0].float()  # bf16 eager
        fp32 = build(args.model, args.small, device)[0].float()
        ref32 = fp32(**{k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()},
                     return_dict=False)[0].float()
        del fp32
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    variants = [("bf16", None, False), ("attn-int8", None, True), ("w8a8-fp8", "fp8", False),
                ("w8a8-fp8+attn-int8", "fp8", True), ("w8a8-int8", "int8", False), ("w4a8", "w4a8", False),
                ("lsgquant-w4a4", "lsgquant", False)]
    if args.variants:  # bf16 always runs: every speedup is a ratio measured side by side in one run
        variants = [v for v in variants if v[0] in args.variants.split(",") or v[0] == "bf16"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for tag, qkind, attn in variants:
        t0 = time.perf_counter()
        try:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model, _, _ = build(args.model, args.small, device) if qkind else (base, None, None)
            kernels = None
            if qkind == "lsgquant":
                compiled, kernels = lsgquant_lowered(model, inputs, device)
            elif qkind:
                if qkind == "fp8" and (device != "cuda" or torch.cuda.get_device_capability() < (8, 9)):
                    raise RuntimeError("FP8 needs CUDA sm_89+")
                skip = small_m_linears(base, inputs) if qkind == "int8" else set()
                quantize_(model, torchao_config(qkind), filter_fn=lambda m, f: linear_filter(m, f) and f not in skip)
            if qkind != "lsgquant":
                compiled = torch.compile(model) if not args.no_compile else model
            ctx = int8_attention_override() if attn else contextlib.nullcontext()
            with ctx, torch.no_grad():
                out = compiled(**inputs, return_dict=False)[0].float()  # compile + warm-up
                compile_s = time.perf_counter() - t0
                compiled(**inputs, return_dict=False)
                ms = timed(lambda: compiled(**inputs, return_dict=False), args.iters, device)
                ops = op_breakdown(lambda: compiled(**inputs, return_dict=False), device)
            wbytes = {"fp8": 1, "int8": 1, "w4a8": 0.5, "lsgquant": 0.54}.get(qkind, 2)  # lsgquant: + ~2% bf16 low-rank
            r = {"median_ms": round(sorted(ms)[len(ms) // 2], 2), "all_ms": [round(t, 2) for t in ms],
                 "compile_s": round(compile_s, 1), "sqnr_vs_bf16_db": round(sqnr(ref, out), 2),
                 "sqnr_vs_fp32_db": round(sqnr(ref32, out), 2),
                 "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
                 "checkpoint_bytes": checkpoint_bytes(model, wbytes, 128 if qkind == "w4a8" else None),
                 "op_ms": ops, "linears": qkind or "bf16", "attention": "int8 Q.K^T / fp16 P.V" if attn else "sdpa bf16"}
            r["kernel"] = KERNEL_NOTES.get(qkind, "real kernel") if qkind else "bf16 GEMM"
            if attn:
                from lsgq_compiler.kernels.attention import CUDA_SETTINGS

                r["attention_kernel_settings"] = {str(d): v for d, v in CUDA_SETTINGS.items()}
            if qkind == "int8":
                r["bf16_small_m_linears"] = len(skip)
            if kernels is not None:
                r.update(kernels)
            elif qkind:
                r["layer_sqnr_db"] = layer_fidelity(base, model, inputs)
            results[tag] = r
            print(f"{tag:22s} {r['median_ms']:9.2f} ms  sqnr {r['sqnr_vs_bf16_db']:6.2f} dB (fp32: "
                  f"{r['sqnr_vs_fp32_db']:.2f})  ops {ops}", flush=True)
            if qkind:
                del model
        except Exception as e:  # a variant without a kernel here: say so, keep going
            results[tag] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"{tag:22s} unavailable: {results[tag]['error']}", flush=True)
        r = results[tag]
        r["run"] = stamp
        b = results.get("bf16", {}).get("median_ms")
        if b and "median_ms" in r:  # bf16 runs first: speed-ups are ratios within this run
            r["bf16_same_run_ms"] = b
            r["speedup_vs_bf16_compile"] = round(b / r["median_ms"], 3)
        gc.collect()
        torch._dynamo.reset()
        write_result(args, {"model": args.model, "partial": True, "results": results}, gpu)  # survives a timeout
    return {"model": args.model, "params": n_params, "video_tokens": tokens, "text_tokens": 226,
            "inputs": {k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)},
            "results": results}


def run_calib(args, device: str) -> dict:
    from lsgq_compiler import QuantConfig, compile_quantized

    model, inputs, tokens = build(args.model, args.small, device)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator(device).manual_seed(2)
    calib = []
    for _ in range(args.calib_clips):
        b = dict(inputs)
        b["hidden_states"] = torch.randn(inputs["hidden_states"].shape, generator=g, device=device,
                                         dtype=torch.bfloat16)
        calib.append(b)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    cfg = QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4,
                      options={"observe_tokens": 128, "light_iters": 30, "full_iters": 50,
                               "sensitivity": "qerror"})  # output_error needs a backward pass at 18k tokens
    qm = compile_quantized(model, inputs, cfg, calib_data=calib, progress=False)
    total = time.perf_counter() - t0
    with torch.no_grad():
        ref = model(**inputs, return_dict=False)[0].float()
        out = qm(**inputs).float()
    return {"model": args.model if not args.small else "small", "params": n_params, "video_tokens": tokens,
            "calib_clips": args.calib_clips, "total_s": round(total, 1),
            "timings_s": {k: round(v, 1) for k, v in qm.info["timings"].items()},
            "peak_mem_gib_per_stage": {k: round(v, 2) for k, v in qm.info.get("peak_mem_gib", {}).items()},
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "sqnr_w4a4_sim_vs_bf16_db": round(sqnr(ref, out), 2), "notes": {k: v for k, v in qm.info["notes"].items()
                                                                             if k != "attention"}}


def write_result(args, res: dict, gpu: str) -> Path:
    """Atomically write (or, for a ``--variants`` subset, merge into) the part's JSON."""
    res = dict(res, gpu=gpu, torch=torch.__version__, host=platform.node(), small=args.small)
    name = f"gpu_scale_{args.part}_{args.model}{'_small' if args.small else ''}.json"
    out = Path(os.environ.get("OUT", args.out)) / name if os.environ.get("OUT") else Path(args.out) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = Path(args.out) / name
    if args.variants and "results" in res and prev.exists():  # a subset run: keep the other variants
        old = json.loads(prev.read_text())
        if old.get("gpu") == gpu:
            res["results"] = {**old.get("results", {}), **res["results"]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    return out


def plot_breakdown(results_dir: str | Path, out: str | Path | None = None, target: float = 1.6) -> Path:
    """Stacked bars of per-op time (linears / attention / other) for every variant of each
    ``gpu_scale_speed_<model>.json`` in ``results_dir``, with the bf16 time divided by ``target``
    marked: where the milliseconds are, and how far the target is. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(Path(results_dir).glob("gpu_scale_speed_*.json"))
    files = [f for f in files if not f.stem.endswith("_small")]
    if not files:
        raise SystemExit(f"no gpu_scale_speed_*.json in {results_dir}: run --part speed first")
    fig, axes = plt.subplots(len(files), 1, figsize=(9, 2.2 + 0.45 * 7 * len(files)), squeeze=False)
    colors = {"linear_gemm": "#4c72b0", "attention": "#dd8452", "other": "#8c8c8c"}
    for ax, f in zip(axes[:, 0], files):
        d = json.loads(f.read_text())
        rows = [(k, r) for k, r in d["results"].items() if "op_ms" in r]
        names = [k for k, _ in rows][::-1]
        left = [0.0] * len(rows)
        for cat, col in colors.items():
            vals = [r["op_ms"].get(cat, 0.0) for _, r in rows][::-1]
            ax.barh(names, vals, left=left, color=col, label=cat.replace("_gemm", "s"))
            left = [a + b for a, b in zip(left, vals)]
        base = d["results"].get("bf16", {}).get("median_ms") or max(left)
        xmax = 1.5 * base  # simulated variants (many times slower) run off the axis, labelled
        for y, (_, r) in enumerate(rows[::-1]):
            clipped = left[y] > 0.8 * xmax
            ax.text(0.8 * xmax if clipped else left[y] * 1.01, y,
                    f"{'>> ' if clipped else ''}{r['median_ms']:.0f} ms  {r.get('speedup_vs_bf16_compile', 0):.2f}x",
                    va="center", fontsize=8, color="w" if clipped else "k")
        if base:
            ax.axvline(base / target, color="k", ls="--", lw=1)
            ax.text(base / target, len(rows) - 0.4, f" {target}x target", fontsize=8)
        ax.set_title(f"{d['model']}  ({d.get('gpu', '?')}, {d.get('video_tokens', '?')} video tokens)", fontsize=10)
        ax.set_xlabel("ms per transformer call (per-op time from the profiler; label: end-to-end median)")
        ax.set_xlim(0, xmax)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(out or Path(results_dir) / "gpu_scale_breakdown.png")
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["speed", "calib"], default="speed")
    ap.add_argument("--model", choices=sorted(CONFIGS), default="cogvideox-5b")
    ap.add_argument("--small", action="store_true", help="tiny configs (smoke test)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--variants", default="", help="comma-separated subset")
    ap.add_argument("--calib-clips", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--plot", action="store_true",
                    help="only draw gpu_scale_breakdown.png from the JSON results in --out (no GPU needed)")
    args = ap.parse_args()
    if args.plot:
        print(f"wrote {plot_breakdown(args.out)}")
        return
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    res = run_speed(args, device, gpu) if args.part == "speed" else run_calib(args, device)
    out = write_result(args, res, gpu)
    print(json.dumps({k: v for k, v in res.items() if k != "results"}, indent=1)[:3000])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
