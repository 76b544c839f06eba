"""Deployed quantized transformers on one GPU (issue #16): real int4 x FP8 kernels, random bf16 weights.

    python bench/deploy_gpu.py                      # ops check + GEMMs, CogVideoX1.5-5B, Wan2.1-1.3B, Wan2.1-14B
    python bench/deploy_gpu.py --parts ops,cog      # a subset
    python bench/deploy_gpu.py --small              # tiny configs (smoke test; CPU works)

Writes ``bench/results/deploy_gpu.json`` (or ``$OUT/deploy_gpu.json``) with the GPU named, after every part.

Variants per model (bf16 always first; speed-ups are ratios within one run):
- ``bf16``: the diffusers model, torch.compile.
- ``w8a8-fp8+attn-int8``: torchao FP8 rowwise on every non-kept linear + lsgq::int8_attention, torch.compile.
- ``lsgquant-cuda-sm90``: the LSGQuant-style plan deployed: each non-kept linear becomes a
  ``DeployLinear`` (not an nn.Linear): block-Hadamard rotation (128) of its input, int4 weights
  (groups of 128) x FP8 row activations through ``lsgq::int4_fp8_linear`` (mslk f8i4bf16_shuffled)
  on the residual, plus a bf16 rank-32 branch; 8-bit attention. Built from a checkpoint of plain
  tensors (safetensors) written by this script, loaded with the model skeleton on the meta
  device (no bf16 copy), then torch.compile. Its ``sim`` is the same plan with every linear on
  the float32 reference of the same numerics (``shuffled=False``), eager.
Wan2.1-14B: the deployed W4 model only, weights made directly in packed form layer by layer on the
GPU (each random bf16 weight exists only while it is quantized), eager, peak memory at 14k tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_scale as gs  # noqa: E402  (model configs, inputs, timing, op breakdown, 8-bit attention override)

from lsgq_compiler.kernels import deploy_ops as ops  # noqa: E402

RANK = 32
HBLOCK = 128


def hadamard(n: int, device, dtype=torch.bfloat16) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(device=device, dtype=dtype)


class DeployLinear(nn.Module):
    """``y = int4_fp8(xH, Q(WH - BA)) + (xH A^T) B^T + bias``; ``x: (..., K)`` -> ``(..., N)``.

    Buffers: qweight int8 (N, K/2) (mslk-shuffled on sm_90), group_scale fp8, row_scale fp32 (N,),
    lr_a bf16 (r, K), lr_b bf16 (N, r), bias bf16 (N,) or None, had bf16 (128, 128).
    """

    def __init__(self, w: dict, lr_a: torch.Tensor | None, lr_b: torch.Tensor | None, bias: torch.Tensor | None,
                 had: torch.Tensor | None) -> None:
        super().__init__()
        self.shuffled = bool(w.get("shuffled", False))
        for k in ("qweight", "group_scale", "row_scale"):
            self.register_buffer(k, w[k])
        self.register_buffer("lr_a", lr_a)
        self.register_buffer("lr_b", lr_b)
        self.register_buffer("bias", bias)
        self.register_buffer("had", had, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.had is not None:
            shp = x.shape
            x = (x.reshape(*shp[:-1], shp[-1] // HBLOCK, HBLOCK) @ self.had).reshape(shp)
        y = ops.int4_fp8_linear(x, {"qweight": self.qweight, "group_scale": self.group_scale,
                                    "row_scale": self.row_scale, "shuffled": self.shuffled}, self.bias)
        if self.lr_a is not None:
            y = y + (x @ self.lr_a.t()) @ self.lr_b.t()
        return y


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None, rank: int, rotate: bool) -> dict[str, torch.Tensor]:
    """Plain checkpoint tensors of one linear (``weight (N, K)`` on the GPU)."""
    n, k = weight.shape
    w = weight.float()
    if rotate:
        w = (w.reshape(n, k // HBLOCK, HBLOCK) @ hadamard(HBLOCK, w.device, torch.float32)).reshape(n, k)
    out: dict[str, torch.Tensor] = {}
    if rank:
        u, s, v = torch.svd_lowrank(w, q=rank, niter=1)
        a, b = v.t().contiguous().to(torch.bfloat16), (u * s).contiguous().to(torch.bfloat16)
        w = w - b.float() @ a.float()
        out.update(lr_a=a, lr_b=b)
    codes, scales = ops.quantize_weight_int4_g128(w)
    out.update(ops.pack_int4_for_cuda(codes, scales))
    if bias is not None:
        out["bias"] = bias.detach().to(torch.bfloat16)
    return out


def targets(model: nn.Module) -> list[str]:
    return [f for f, m in model.named_modules() if gs.linear_filter(m, f) and m.in_features % 128 == 0
            and m.out_features % 64 == 0]


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, name = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def build_deploy_modules(model: nn.Module, tensors: dict[str, torch.Tensor], names: list[str], device: str,
                         rotate: bool, shuffle: bool = True) -> None:
    had = hadamard(HBLOCK, device) if rotate else None
    for f in names:
        t = {k[len(f) + 1:]: v for k, v in tensors.items() if k.startswith(f + ".")}
        w = ops.to_kernel_layout({k: t[k] for k in ("qweight", "group_scale", "row_scale")}, device) if shuffle \
            else {k: t[k].to(device) for k in ("qweight", "group_scale", "row_scale")} | {"shuffled": False}
        set_module(model, f, DeployLinear(w, t.get("lr_a"), t.get("lr_b"), t.get("bias"), had))


def make_checkpoint(model: nn.Module, rank: int, rotate: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """All tensors (CPU) of the deployed model: packed linears + every other parameter and buffer."""
    names = targets(model)
    tset = set(names)
    tensors: dict[str, torch.Tensor] = {}
    for f in names:
        m = model.get_submodule(f)
        for k, v in quantize_linear(m.weight, m.bias, rank, rotate).items():
            tensors[f"{f}.{k}"] = v.cpu()
    for mod_name, mod in model.named_modules():
        if mod_name in tset:
            continue
        for k, v in list(mod._parameters.items()) + list(mod._buffers.items()):
            if v is not None:
                tensors[f"{mod_name}.{k}" if mod_name else k] = v.detach().cpu().contiguous()
    return tensors, names


def load_deployed(name: str, small: bool, path: Path, device: str, rotate: bool, shuffle: bool = True) -> nn.Module:
    """Skeleton on the meta device, then the checkpoint's tensors assigned (no bf16 copy)."""
    import diffusers
    from safetensors.torch import load_file

    spec = gs.CONFIGS[name]
    cfg = dict(spec["cfg"], **(gs.SMALL[name] if small else {}))
    with torch.device("meta"):
        model = getattr(diffusers, spec["cls"])(**cfg).to(torch.bfloat16).eval()
    tensors = load_file(str(path), device=device)
    names = json.loads((path.parent / "targets.json").read_text())
    build_deploy_modules(model, tensors, names, device, rotate, shuffle)
    tset = set(names)
    for mod_name, mod in model.named_modules():
        if mod_name in tset or isinstance(mod, DeployLinear):
            continue
        for store in (mod._parameters, mod._buffers):
            for k in list(store):
                key = f"{mod_name}.{k}" if mod_name else k
                if key in tensors:
                    v = tensors[key]
                    store[k] = nn.Parameter(v, requires_grad=False) if store is mod._parameters else v
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors missing from the checkpoint: {left[:5]}")
    return model


def gpu_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def bench_call(fn, iters: int, device: str) -> dict:
    fn()
    fn()
    ms = gs.timed(fn, iters, device)
    return {"median_ms": round(sorted(ms)[len(ms) // 2], 2), "all_ms": [round(t, 2) for t in ms],
            "op_ms": gs.op_breakdown(fn, device)}


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


def reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------- parts
def part_ops(device: str) -> dict:
    """CUDA ops vs their references, and GEMM times at DOVE's shapes (M = 17,776) vs bf16."""
    import triton.testing as tt

    res: dict = {"available_kernels": ops.available_kernels(device), "shapes": {}}
    m = 17776
    g = torch.Generator(device).manual_seed(0)
    for k, n in ((3072, 3072), (3072, 12288), (12288, 3072)):
        x = torch.randn(m, k, generator=g, device=device).to(torch.bfloat16)
        w = torch.randn(n, k, generator=g, device=device) * k ** -0.5
        b = torch.randn(n, generator=g, device=device).to(torch.bfloat16) * 0.1
        wb = w.to(torch.bfloat16)
        ref_float = (x.float() @ w.t() + b.float())
        codes, scales = ops.quantize_weight_int4_g128(w)
        packed = ops.pack_int4_for_cuda(codes, scales)
        kern = ops.to_kernel_layout(packed, device)
        plain = {kk: v.to(device) for kk, v in packed.items()} | {"shuffled": False}
        wq8, ws8 = ops.quantize_weight_fp8_row(w)
        wi8, wsi = ops.quantize_weight_int8_row(w)
        pk4 = ops.pack_int4(codes)
        fns = {"bf16": lambda: F.linear(x, wb, b),
               "int4_fp8": lambda: ops.int4_fp8_linear(x, kern, b),
               "fp8_row": lambda: ops.fp8_linear(x, wq8, ws8, b),
               "int8_row": lambda: ops.int8_linear(x, wi8, wsi, b),
               "int4_weight": lambda: ops.int4_weight_linear(x, pk4, scales, b)}
        refs = {"int4_fp8": ops.int4_fp8_linear(x, plain, None).float() + b.float(),
                "fp8_row": ops.quantize_act_fp8_row(x) @ (wq8.float() * ws8[:, None]).t() + b.float(),
                "int8_row": None, "int4_weight": None, "bf16": None}
        # the int4 x FP8 reference without the FP8 lookup-table rounding (is the LUT model right?)
        xq, xs = ops.act_fp8_row(x)
        no_lut = (xq.float() @ ops.dequantize_int4_g128(codes, scales.to(device), "bf16").t()) * xs[:, None] + b.float()
        row = {}
        for tag, fn in fns.items():
            try:
                y = fn().float()
                t = tt.do_bench(fn, warmup=25, rep=100, return_mode="median")
                r = {"ms": round(t, 4), "tflops": round(2 * m * k * n / t / 1e9, 1),
                     "sqnr_vs_float_db": round(gs.sqnr(ref_float, y), 2)}
                if refs.get(tag) is not None:
                    r["sqnr_vs_reference_db"] = round(gs.sqnr(refs[tag], y), 2)
                    r["max_abs_diff_vs_reference"] = float((refs[tag] - y).abs().max())
                if tag == "int4_fp8":
                    r["sqnr_vs_reference_without_fp8_lut_db"] = round(gs.sqnr(no_lut, y), 2)
                row[tag] = r
            except Exception as e:
                row[tag] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        bms = row["bf16"].get("ms")
        for r in row.values():
            if bms and "ms" in r:
                r["speedup_vs_bf16"] = round(bms / r["ms"], 3)
        res["shapes"][f"{m}x{k}->{n}"] = row
        print(f"M={m} {k}->{n}: " + "  ".join(f"{t} {r.get('ms', 'ERR')}ms {r.get('sqnr_vs_reference_db', '')}"
                                               for t, r in row.items()), flush=True)
        del x, w, wb, kern, plain, packed
        gc.collect()
        torch.cuda.empty_cache()
    return res


def part_model(name: str, args, device: str, ckdir: Path, out: dict | None = None) -> dict:
    from torchao.quantization import quantize_

    base, inputs, tokens = gs.build(name, args.small, device)
    n_params = sum(p.numel() for p in base.parameters())
    out = {} if out is None else out
    out.update({"model": name, "params": n_params, "video_tokens": tokens, "variants": {}})
    V = out["variants"]
    with torch.no_grad():
        ref = base(**inputs, return_dict=False)[0].float()
    call = lambda m: (lambda: m(**inputs, return_dict=False))  # noqa: E731

    # bf16 compile
    reset_peak(device)
    t0 = time.perf_counter()
    cb = torch.compile(base)
    with torch.no_grad():
        r = bench_call(call(cb), args.iters, device)
    r.update(compile_and_warmup_s=round(time.perf_counter() - t0, 1), weight_bytes_gpu=gpu_bytes(base),
             peak_mem_gib=peak_gib(device), linears="bf16", attention="sdpa bf16")
    V["bf16"] = r
    bms = r["median_ms"]
    print(f"{name} bf16 {bms} ms", flush=True)
    SAVE()
    del cb
    torch._dynamo.reset()

    # checkpoint of the deployed plan (from the bf16 weights), then free the bf16 model
    t0 = time.perf_counter()
    with torch.no_grad():
        tensors, names = make_checkpoint(base, RANK, rotate=True)
    ckdir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    ck = ckdir / "model.safetensors"
    save_file(tensors, str(ck))
    (ckdir / "targets.json").write_text(json.dumps(names))
    quant_s = round(time.perf_counter() - t0, 1)
    del tensors

    # FP8 W8A8 (torchao) + 8-bit attention, compiled
    if not args.skip_fp8:
        try:
            quantize_(base, gs.torchao_config("fp8"), filter_fn=gs.linear_filter)
            reset_peak(device)
            t0 = time.perf_counter()
            cf = torch.compile(base)
            with gs.int8_attention_override(), torch.no_grad():
                o = cf(**inputs, return_dict=False)[0].float()
                r = bench_call(call(cf), args.iters, device)
            r.update(compile_and_warmup_s=round(time.perf_counter() - t0, 1), weight_bytes_gpu=gpu_bytes(base),
                     peak_mem_gib=peak_gib(device), sqnr_vs_bf16_db=round(gs.sqnr(ref, o), 2),
                     linears="torchao Float8DynamicActivationFloat8WeightConfig(PerRow) (_scaled_mm)",
                     attention="lsgq::int8_attention (Triton)", speedup_vs_bf16_compile=round(bms / r["median_ms"], 3))
            V["w8a8-fp8+attn-int8"] = r
            print(f"{name} fp8+attn8 {r['median_ms']} ms", flush=True)
            del cf
        except Exception as e:
            V["w8a8-fp8+attn-int8"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        torch._dynamo.reset()
    del base
    gc.collect()
    torch.cuda.empty_cache()

    # deployed from the checkpoint
    tag = "lsgquant-cuda-sm90"
    try:
        reset_peak(device)
        base_alloc = torch.cuda.memory_allocated() if device == "cuda" else 0
        t0 = time.perf_counter()
        dm = load_deployed(name, args.small, ck, device, rotate=True)
        if device == "cuda":
            torch.cuda.synchronize()
        load_s = time.perf_counter() - t0
        print(f"{name} deployed loaded in {load_s:.1f} s", flush=True)
        with gs.int8_attention_override(), torch.no_grad():
            eager = gs.timed(call(dm), 3, device)
        V[tag + "-eager"] = {"median_ms": round(sorted(eager)[1], 2), "all_ms": [round(t, 2) for t in eager],
                             "speedup_vs_bf16_compile": round(bms / sorted(eager)[1], 3), "load_s": round(load_s, 2),
                             "peak_mem_gib": peak_gib(device), "weight_bytes_gpu": gpu_bytes(dm),
                             "checkpoint_bytes": ck.stat().st_size}
        print(f"{name} deployed eager {V[tag + '-eager']}", flush=True)
        SAVE()
        t0 = time.perf_counter()
        cd = torch.compile(dm)
        with gs.int8_attention_override(), torch.no_grad():
            o = cd(**inputs, return_dict=False)[0].float()
            r = bench_call(call(cd), args.iters, device)
        r.update(compile_and_warmup_s=round(time.perf_counter() - t0, 1), load_s=round(load_s, 2),
                 quantize_and_save_s=quant_s, checkpoint_bytes=ck.stat().st_size, weight_bytes_gpu=gpu_bytes(dm),
                 peak_mem_gib=peak_gib(device),
                 peak_mem_gib_above_start=round((torch.cuda.max_memory_allocated() - base_alloc) / 2**30, 3)
                 if device == "cuda" else None,
                 sqnr_vs_bf16_db=round(gs.sqnr(ref, o), 2), speedup_vs_bf16_compile=round(bms / r["median_ms"], 3),
                 quantized_linears=len(names), rank=RANK, rotation=f"block Hadamard {HBLOCK} (online, bf16 matmul)",
                 linears=ops.available_kernels(device)["int4_fp8_linear"], attention="lsgq::int8_attention (Triton)",
                 built_from="this script's safetensors checkpoint (plain tensors; lsgq_compiler.deploy not used)")
        fp8 = V.get("w8a8-fp8+attn-int8", {}).get("median_ms")
        if fp8:
            r["speed_vs_fp8_attn8"] = round(fp8 / r["median_ms"], 3)
        V[tag] = r
        SAVE()
        print(f"{name} deployed {r['median_ms']} ms  peak {r['peak_mem_gib']} GiB  {r['sqnr_vs_bf16_db']} dB", flush=True)
        del cd, dm
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        sim = load_deployed(name, args.small, ck, device, rotate=True, shuffle=False)
        with gs.int8_attention_override(), torch.no_grad():
            os_ = sim(**inputs, return_dict=False)[0].float()
        r["sqnr_vs_sim_db"] = round(gs.sqnr(os_, o), 2)
        r["sim"] = "same plan, every linear on the float32 reference of the kernel's numerics (shuffled=False), eager"
        r["sim_sqnr_vs_bf16_db"] = round(gs.sqnr(ref, os_), 2)
        del sim
    except Exception as e:
        import traceback

        traceback.print_exc()
        V[tag] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        SAVE()
    gc.collect()
    torch.cuda.empty_cache()
    return out


def SAVE() -> None:  # replaced in main(): write the results so far
    pass


def part_wan14b(args, device: str) -> dict:
    """Wan2.1-14B config, deployed W4 weights made directly in packed form on the GPU; eager at 14k tokens."""
    import diffusers

    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40)
    if args.small:
        cfg.update(num_attention_heads=2, ffn_dim=512, num_layers=2, text_dim=64)
    reset_peak(device)
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = diffusers.WanTransformer3DModel(**cfg).to(torch.bfloat16).eval()
    # non-persistent buffers (rotary tables) from a tiny model of the same head dim / patch size
    small_cfg = dict(cfg, num_attention_heads=1, ffn_dim=128, num_layers=1, text_dim=64)
    tiny = dict(diffusers.WanTransformer3DModel(**small_cfg).named_buffers())
    names = targets(model)
    tset = set(names)
    g = torch.Generator(device).manual_seed(0)
    had = hadamard(HBLOCK, device)
    for f in names:
        m = model.get_submodule(f)
        n, k = m.out_features, m.in_features
        w = (torch.rand(n, k, generator=g, device=device, dtype=torch.bfloat16) * 2 - 1) * k ** -0.5
        b = (torch.rand(n, generator=g, device=device, dtype=torch.bfloat16) * 2 - 1) * k ** -0.5 if m.bias is not None \
            else None
        t = quantize_linear(w, b, RANK, rotate=True)
        del w
        set_module(model, f, DeployLinear(ops.to_kernel_layout({kk: t[kk] for kk in ("qweight", "group_scale",
                                                                                      "row_scale")}, device),
                                          t.get("lr_a"), t.get("lr_b"), t.get("bias"), had))
    for mod_name, mod in model.named_modules():
        if mod_name in tset or isinstance(mod, DeployLinear):
            continue
        for k, v in list(mod._parameters.items()):
            if v is not None and v.is_meta:
                fan = v.shape[-1] if v.dim() > 1 else 1
                data = (torch.rand(v.shape, generator=g, device=device) * 2 - 1) * fan ** -0.5 if v.dim() > 1 \
                    else torch.ones(v.shape, device=device) if "norm" in mod_name or k == "weight" \
                    else torch.zeros(v.shape, device=device)
                mod._parameters[k] = nn.Parameter(data.to(torch.bfloat16), requires_grad=False)
        for k, v in list(mod._buffers.items()):
            if v is not None and v.is_meta:
                key = f"{mod_name}.{k}" if mod_name else k
                mod._buffers[k] = tiny[key].to(device)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    wbytes = gpu_bytes(model)
    n_bf16 = sum(p.numel() for p in model.parameters())
    # inputs as gpu_scale's Wan (480x832, 33 frames -> 14,040 video tokens)
    h, wd, frames = (480, 832, 33) if not args.small else (128, 128, 9)
    lt, lh, lw = (frames - 1) // 4 + 1, h // 8, wd // 8
    gi = torch.Generator(device).manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, lt, lh, lw, generator=gi, device=device, dtype=torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, 226 if not args.small else 16, cfg["text_dim"], generator=gi,
                                                    device=device, dtype=torch.bfloat16),
                  timestep=torch.tensor([399], device=device))
    torch.cuda.reset_peak_memory_stats()
    with gs.int8_attention_override(), torch.no_grad():
        r = bench_call(lambda: model(**inputs, return_dict=False), max(2, args.iters // 2), device)
        o = model(**inputs, return_dict=False)[0]
    r.update(model="wan-14b", video_tokens=lt * (lh // 2) * (lw // 2), build_s=round(build_s, 1),
             weight_bytes_gpu=wbytes, bf16_params_outside_deploy_linears=n_bf16, quantized_linears=len(names),
             peak_mem_gib=peak_gib(device), finite=bool(torch.isfinite(o).all()), compiled="eager",
             weights="random, made per layer on the GPU and packed at once (no bf16 copy of the model)")
    print(f"wan-14b deployed eager {r['median_ms']} ms  peak {r['peak_mem_gib']} GiB  weights {wbytes / 1e9:.2f} GB",
          flush=True)
    return r


def write(res: dict, args) -> Path:
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"deploy_gpu{'_small' if args.small else ''}.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, p)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="ops,cog,wan14b,wan")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--skip-fp8", action="store_true")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip parts that start after this many seconds")
    ap.add_argument("--ckdir", default="/tmp/lsgq_deploy_ck")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {"gpu": torch.cuda.get_device_name() if device == "cuda" else "none", "torch": torch.__version__,
                 "command": "python bench/deploy_gpu.py " + " ".join(sys.argv[1:]),
                 "run": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    try:
        import mslk

        res["mslk"] = getattr(mslk, "__version__", "?")
    except Exception as e:
        res["mslk"] = f"missing: {e}"
    t_start = time.perf_counter()
    global SAVE
    SAVE = lambda: write(res, args)  # noqa: E731
    for part in args.parts.split(","):
        if time.perf_counter() - t_start > args.budget_s:
            res["parts"][part] = {"skipped": "time budget of this run"}
            continue
        try:
            if part == "ops":
                res["parts"]["ops"] = part_ops(device)
            elif part == "cog":
                res["parts"]["cogvideox-5b"] = {}
                part_model("cogvideox-5b", args, device, Path(args.ckdir) / "cog", res["parts"]["cogvideox-5b"])
            elif part == "wan":
                res["parts"]["wan-1.3b"] = part_model("wan-1.3b", args, device, Path(args.ckdir) / "wan")
            elif part == "wan14b":
                res["parts"]["wan-14b"] = part_wan14b(args, device)
        except Exception as e:
            import traceback

            traceback.print_exc()
            res["parts"][part] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"wrote {write(res, args)}  ({time.perf_counter() - t_start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
