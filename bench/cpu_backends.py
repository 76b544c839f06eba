"""CPU backends benchmark: latency, peak memory, file size and fidelity of each way to run the model.

    python bench/cpu_backends.py --model tiny-vsr          # the shipped model, demo clip size
    python bench/cpu_backends.py --model tiny-wan --quick  # the tests' tiny Wan

Variants: full-precision eager torch, torch fake-quant W8A8 (the plan's reference numerics),
torchao W8A8 (eager), inductor FP32 and the ``lsgq`` torch.compile backend (W8A8, torchao
kernels + inductor), ORT FP32, ORT int8 (ours: per-token ``MatMulInteger``, per-tensor
``DynamicQuantizeMatMul``, the same plus 8-bit ``Q K^T`` (``attention_bits=8``) as ORT's own
integer ops or as lsgq's fused custom op ``com.lsgq::Int8Attention``, static QDQ ``QGemm``),
ORT 4-bit weights (ours: ``MatMulNBits``), and
onnxruntime.quantization's ``quantize_dynamic`` / ``quantize_static`` / ``MatMulNBitsQuantizer``
on the same FP32 export (baselines). Each variant runs in a fresh process (``--worker``) on
``--threads`` threads (inductor variants once: their compile time is in ``setup_s``):

- latency: median over ``--rounds`` processes x ``--repeats`` calls, after one warm-up call;
- memory: peak RSS during the calls minus RSS before the first call (sampled every 2 ms,
  ``/proc/self/statm``): the working memory of inference, not tracemalloc;
- size: bytes of the file(s) a deployment loads (ONNX file; artifact folder; bf16 checkpoint);
- fidelity: SQNR (dB) of the transformer output against full precision and against the torch
  fake-quant model of the same plan; for tiny-vsr also PSNR (dB) of the upscaled frames
  against the full-precision frames.

Writes ``bench/results/cpu_backends.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ORT_VARIANTS = ("ort_fp32", "ort_int8_token", "ort_int8_tensor", "ort_int8_attn", "ort_int8_lsgq_attn", "ort_int8_static",
                "ort_w4", "ortq_dynamic", "ortq_static", "ortq_w4")
TORCH_VARIANTS = ("torch_fp32", "torch_fakequant_w8a8", "torchao_w8a8")
INDUCTOR_VARIANTS = ("inductor_fp32", "lsgq_inductor_w8a8")
REFERENCE = {"torchao_w8a8": "w8a8", "ort_int8_token": "w8a8", "ort_int8_tensor": "w8a8", "ort_int8_static": "w8a8",
             "ort_int8_attn": "w8a8attn", "ort_int8_lsgq_attn": "w8a8attn",
             "ortq_dynamic": "w8a8", "ortq_static": "w8a8", "torch_fakequant_w8a8": "w8a8",
             "lsgq_inductor_w8a8": "w8a8", "ort_w4": "w4a8", "ortq_w4": "w4a8"}


EXPORT_NOTE = ("every ORT variant (FP32 included) comes from the same export (backends/onnx/rewrite.py export_graph): "
               "interleaved RoPE writes as stack+reshape (no ScatterND/Transpose), full-precision attention as "
               "com.microsoft.MultiHeadAttention, RMSNorm in the form ORT fuses to SimplifiedLayerNormalization")


# ----------------------------------------------------------------------------- models and inputs
def load_model(name: str, frames: int):
    """``(transformer, eval inputs, calibration inputs, vsr or None)``."""
    if name == "tiny-vsr":
        from lsgq_compiler.vsr.data.sets import calibration_set, eval_set
        from lsgq_compiler.vsr.models import load_tiny_vsr
        from lsgq_compiler.vsr.tiling import to_tensor

        vsr = load_tiny_vsr()
        calib = [vsr.transformer_inputs(to_tensor(c.lq)) for c in calibration_set(n_clips=4, frames=frames)]
        clip = eval_set(n_clips=1, frames=frames)[0]
        return vsr.transformer, vsr.transformer_inputs(to_tensor(clip.lq)), calib, vsr
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_wan, wan_inputs

    return tiny_wan(), wan_inputs(frames=frames, size=16), [wan_inputs(frames=frames, size=16, seed=s)
                                                           for s in (2, 3, 4)], None


def perturbed(inputs: dict, eps: float = 1e-6) -> dict:
    """``hidden_states * (1 + eps)``: how far the quantized model's own output moves when rounding
    decisions flip, the floor for any other implementation of the same quantization."""
    return {k: v * (1 + eps) if k == "hidden_states" else v for k, v in inputs.items()}


def save_inputs(inputs: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in inputs.items()}, str(path))


def read_inputs(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------- preparation
def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def prepare(args, work: Path) -> dict:
    from safetensors.torch import save_file

    from lsgq_compiler import QuantConfig, compile_quantized, save_quantized
    from lsgq_compiler.backends.onnx import export_float_onnx, export_onnx

    torch.set_num_threads(args.threads)
    model, inputs, calib, _ = load_model(args.model, args.frames)
    save_inputs(inputs, work / "inputs.safetensors")
    t = {}
    qms = {}
    for tag, (wb, ab) in {"w8a8": (8, 8), "w4a8": (4, 8)}.items():
        t0 = time.perf_counter()
        qms[tag] = compile_quantized(model, inputs, QuantConfig(weight_bits=wb, act_bits=ab),
                                     calib_data=calib, progress=False)
        t[f"compile_{tag}_s"] = time.perf_counter() - t0
        save_quantized(qms[tag], work / f"artifact_{tag}", model=model)  # the deploy checkpoint (its size)
        # the compiled model itself, for the workers' torchao / torch.compile lowerings: plan + trained tensors
        qms[tag].plan.save(work / f"plan_{tag}.json")
        save_file({k: v.contiguous() for k, v in qms[tag].quant_state_dict().items()}, str(work / f"quant_{tag}.safetensors"))
        with torch.no_grad():
            np.save(work / f"fakequant_{tag}.npy", qms[tag](**inputs).numpy())
            np.save(work / f"fakequant_{tag}_perturbed.npy", qms[tag](**perturbed(inputs)).numpy())
    t0 = time.perf_counter()
    qm_attn = compile_quantized(model, inputs, QuantConfig(weight_bits=8, act_bits=8, attention_bits=8),
                                calib_data=calib, progress=False)
    t["compile_w8a8attn_s"] = time.perf_counter() - t0
    with torch.no_grad():
        np.save(work / "fakequant_w8a8attn.npy", qm_attn(**inputs).numpy())
        np.save(work / "fp32.npy", model(**inputs, return_dict=False)[0].numpy())
    save_file({k: v.detach().to(torch.bfloat16).contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in model.state_dict().items()}, str(work / "checkpoint_bf16.safetensors"))
    covered = {f"{p}.{k}" for p, m in qms["w4a8"].quant_linears().items() if m.spec.quantized for k in ("weight", "bias")}
    bf16_covered = sum(v.numel() * 2 for k, v in model.state_dict().items() if k in covered)

    t0 = time.perf_counter()
    export_float_onnx(model, work / "ort_fp32.onnx", inputs)
    export_onnx(qms["w8a8"], work / "ort_int8_token.onnx", inputs, act="token")
    export_onnx(qms["w8a8"], work / "ort_int8_tensor.onnx", inputs, act="tensor")
    export_onnx(qm_attn, work / "ort_int8_attn.onnx", inputs, act="tensor")
    export_onnx(qm_attn, work / "ort_int8_lsgq_attn.onnx", inputs, act="tensor", attention_kernel="lsgq")
    export_onnx(qms["w8a8"], work / "ort_int8_static.onnx", inputs, act="static", calib_data=calib)
    export_onnx(qms["w4a8"], work / "ort_w4.onnx", inputs, w4_block=args.w4_block)
    t["export_s"] = time.perf_counter() - t0
    baselines = ort_baselines(work, calib, args.w4_block)
    return {"timings": t, "bf16_covered_linears_bytes": bf16_covered, "baseline_errors": baselines}


def ort_baselines(work: Path, calib: list, block: int) -> dict:
    """onnxruntime.quantization on the FP32 export: the baselines our export should beat."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from lsgq_compiler.backends.onnx import ort_feed, ort_session

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    logging.disable(logging.INFO)
    model = onnx.load(str(work / "ort_fp32.onnx"))
    del model.graph.value_info[:]  # the exporter's value_info trips the quantizers' shape inference
    fp = work / "baseline_input_fp32.onnx"
    onnx.save(model, str(fp))
    sess = ort_session(fp)
    feeds = [ort_feed(sess, b) for b in calib]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    errors = {}
    jobs = {
        "ortq_dynamic": lambda out: quantize_dynamic(fp, out, per_channel=True, weight_type=QuantType.QInt8,
                                                     op_types_to_quantize=["MatMul", "Gemm"],
                                                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}),
        "ortq_static": lambda out: quantize_static(fp, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                                   activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                                   op_types_to_quantize=["MatMul", "Gemm"],
                                                   extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}),
        "ortq_w4": lambda out: _nbits(MatMulNBitsQuantizer(onnx.load(str(fp)), bits=4, block_size=block,
                                                           is_symmetric=False), out),
    }
    for name, job in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                job(str(work / f"{name}.onnx"))
        except Exception as e:  # noqa: BLE001 - a failing baseline is reported, not fatal
            errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
    return errors


def _nbits(q, out: str) -> None:
    q.process()
    q.model.save_model_to_file(out, use_external_data_format=False)


# ----------------------------------------------------------------------------- worker
class PeakRSS:
    """Peak resident memory (bytes) sampled every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self.rss()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def rebuild_w8a8(model: torch.nn.Module, inputs: dict, work: Path):
    """The W8A8 ``QuantizedModel`` of :func:`prepare`, re-applied from its plan and trained tensors
    (no calibration): what the torchao and ``torch.compile`` lowerings take."""
    from safetensors.torch import load_file

    from lsgq_compiler import QuantConfig, compile_quantized
    from lsgq_compiler.plan import Plan

    return compile_quantized(model, inputs, QuantConfig(weight_bits=8, act_bits=8), plan=Plan.load(work / "plan_w8a8.json"),
                             quant_state=load_file(str(work / "quant_w8a8.safetensors")), progress=False)


def worker(args, work: Path) -> None:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    name = args.worker
    inputs = read_inputs(work / "inputs.safetensors")
    t0 = time.perf_counter()
    if name in ORT_VARIANTS:
        from lsgq_compiler.backends.onnx import ort_feed, ort_session

        sess = ort_session(work / f"{name}.onnx", threads=args.threads)
        feed = ort_feed(sess, inputs)

        def run():
            return torch.from_numpy(sess.run(None, feed)[0])
    else:
        model = load_model(args.model, args.frames)[0]
        if name == "torch_fp32":
            fn = lambda: model(**inputs, return_dict=False)[0]  # noqa: E731
        elif name == "inductor_fp32":
            compiled = torch.compile(model)
            fn = lambda: compiled(**inputs, return_dict=False)[0]  # noqa: E731
        elif name == "lsgq_inductor_w8a8":
            qm = rebuild_w8a8(model, inputs, work)
            compiled = torch.compile(model, backend="lsgq", options={"quantized_model": qm})
            fn = lambda: compiled(**inputs, return_dict=False)[0]  # noqa: E731
        else:
            qm = rebuild_w8a8(model, inputs, work)
            if name == "torchao_w8a8":
                from lsgq_compiler.backends.torchao import lower_torchao

                qm = lower_torchao(qm)
            del model
            fn = lambda: qm(**inputs)  # noqa: E731

        def run():
            with torch.no_grad():
                return fn()
        if name in INDUCTOR_VARIANTS:
            run()  # compiles
    setup_s = time.perf_counter() - t0
    times = []
    with PeakRSS() as mem:
        out = run()
        for _ in range(args.repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    np.save(work / f"out_{name}.npy", out.numpy())
    res = {"times_ms": [x * 1e3 for x in times], "peak_rss_delta_mb": (mem.peak - mem.base) / 2**20,
           "setup_s": setup_s}
    (work / f"res_{name}_{args.round}.json").write_text(json.dumps(res))


# ----------------------------------------------------------------------------- report
def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    from lsgq_compiler.vsr.metrics import sqnr

    return round(sqnr(torch.from_numpy(ref), torch.from_numpy(x)), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("tiny-vsr", "tiny-wan"), default="tiny-vsr")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per variant (latency: median of all)")
    p.add_argument("--w4-block", type=int, default=128)
    p.add_argument("--paired-iters", type=int, default=15, help="rotations of the in-process ORT comparison")
    p.add_argument("--work", default=None, help="working folder (default: build/cpu_backends_<model>)")
    p.add_argument("--no-inductor", action="store_true", help="skip the torch.compile variants (slow to compile)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_backends.json"))
    p.add_argument("--quick", action="store_true", help="2 frames, 5 repeats, 1 round")
    p.add_argument("--skip-prepare", action="store_true")
    p.add_argument("--report-only", action="store_true", help="summarise the workers' results already in --work")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.frames, args.repeats, args.rounds = 2, 5, 1
    work = Path(args.work or ROOT / "build" / f"cpu_backends_{args.model}")
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args, work)

    reuse = args.skip_prepare or args.report_only
    prep = json.loads((work / "prepare.json").read_text()) if reuse else prepare(args, work)
    (work / "prepare.json").write_text(json.dumps(prep, indent=1))
    variants = [v for v in TORCH_VARIANTS + ORT_VARIANTS
                if v in TORCH_VARIANTS or (work / f"{v}.onnx").is_file()]
    if not args.no_inductor:
        variants += list(INDUCTOR_VARIANTS)
    base_cmd = [sys.executable, __file__, "--model", args.model, "--frames", str(args.frames), "--threads",
                str(args.threads), "--repeats", str(args.repeats), "--work", str(work)]
    failures = {}
    for r in range(0 if args.report_only else args.rounds):  # rounds interleave variants: outside load hits all alike
        for v in variants:
            if r and v in INDUCTOR_VARIANTS:
                continue
            proc = subprocess.run(base_cmd + ["--worker", v, "--round", str(r)], capture_output=True, text=True)
            if proc.returncode:
                failures[v] = proc.stderr[-1500:]
    fp = np.load(work / "fp32.npy")
    _, inputs, _, vsr = load_model(args.model, args.frames) if args.model == "tiny-vsr" else (None, None, None, None)
    rows = {}
    for v in variants:
        runs = [json.loads((work / f"res_{v}_{r}.json").read_text()) for r in range(args.rounds)
                if (work / f"res_{v}_{r}.json").is_file()]
        if not runs:
            continue
        out = np.load(work / f"out_{v}.npy")
        times = [t for run in runs for t in run["times_ms"]]
        row = {"latency_ms": round(float(np.median(times)), 2), "latency_min_ms": round(float(np.min(times)), 2),
               "latency_runs": len(times),
               "setup_s": round(float(np.median([run["setup_s"] for run in runs])), 1),
               "peak_rss_delta_mb": round(float(np.median([run["peak_rss_delta_mb"] for run in runs])), 1),
               "sqnr_vs_fp32_db": sqnr_db(fp, out)}
        if v in REFERENCE:
            row["sqnr_vs_torch_quantized_db"] = sqnr_db(np.load(work / f"fakequant_{REFERENCE[v]}.npy"), out)
        if vsr is not None:
            row["psnr_frames_vs_fp32_db"] = psnr_frames(vsr, inputs, fp, out)
            if v in REFERENCE:
                row["psnr_frames_vs_torch_quantized_db"] = psnr_frames(
                    vsr, inputs, np.load(work / f"fakequant_{REFERENCE[v]}.npy"), out)
        if v.startswith("ort"):
            row["file_bytes"] = _size(work / f"{v}.onnx")
        rows[v] = row
    rows["torch_fp32"]["file_bytes"] = _size(work / "checkpoint_bf16.safetensors")
    for tag, v in (("w8a8", "torchao_w8a8"), ("w8a8", "torch_fakequant_w8a8"), ("w8a8", "lsgq_inductor_w8a8")):
        if v in rows:
            rows[v]["file_bytes"] = _size(work / f"artifact_{tag}")
    for v, row in rows.items():
        base = rows.get("ort_fp32" if v.startswith("ort") else "inductor_fp32" if "inductor" in v else "torch_fp32")
        if base:
            row["speedup"] = round(base["latency_ms"] / row["latency_ms"], 2)
        row["speedup_vs_torch_fp32"] = round(rows["torch_fp32"]["latency_ms"] / row["latency_ms"], 2)
    bf16 = _size(work / "checkpoint_bf16.safetensors")
    w4 = _size(work / "artifact_w4a8")
    sizes = {"bf16_checkpoint_bytes": bf16, "bf16_quantized_linears_bytes": prep["bf16_covered_linears_bytes"],
             "w4_artifact_bytes": w4, "w8_artifact_bytes": _size(work / "artifact_w8a8"),
             "w4_artifact_vs_bf16_checkpoint": round(bf16 / w4, 2),
             "w4_artifact_vs_bf16_same_linears": round(prep["bf16_covered_linears_bytes"] / w4, 2),
             "note": "artifacts are deploy checkpoints (save_quantized = save_pretrained): self-contained, the "
                     "quantized linears (codes, scales, low-rank, biases) plus every other tensor of the model in "
                     "its own dtype (float32 here)"}
    floor = {tag: sqnr_db(np.load(work / f"fakequant_{tag}.npy"), np.load(work / f"fakequant_{tag}_perturbed.npy"))
             for tag in ("w8a8", "w4a8") if (work / f"fakequant_{tag}_perturbed.npy").is_file()}
    result = {"model": args.model, "load_average_1min_at_end": round(os.getloadavg()[0], 2),
              "torch_quantized_vs_itself_at_input_x(1+1e-6)_sqnr_db": floor, "frames": args.frames, "threads": args.threads, "repeats": args.repeats,
              "rounds": args.rounds, "inputs": {k: list(v.shape) for k, v in read_inputs(work / "inputs.safetensors").items()},
              "memory_method": "peak RSS during inference minus RSS before it (/proc/self/statm, 2 ms sampling), "
                               "one fresh process per variant", "latency_method": "median over rounds x repeats",
              "cpu": _cpu(), "variants": rows, "sizes": sizes, "prepare": prep, "failures": failures,
              "ort_profile": ort_profile(work, ("ort_fp32", "ort_int8_token", "ort_int8_tensor", "ort_int8_attn",
                                                "ort_int8_lsgq_attn"), args.threads),
              "ort_export": EXPORT_NOTE,
              "ort_paired": paired_ort(work, [v for v in variants if v.startswith("ort")], args.threads,
                                       args.paired_iters),
              "ort_paired_no_spinning": paired_ort(work, [v for v in variants if v.startswith("ort")], args.threads,
                                                   args.paired_iters, spinning=False),
              "ort_paired_note": "ort_paired: every session with ort_session's defaults (ORT's idle threads spin, "
                                 "except in sessions with lsgq's custom op); ort_paired_no_spinning: spinning off in "
                                 "every session (session.intra_op.allow_spinning=0), plus ort_fp32_spinning: the "
                                 "FP32 session with ORT's default, to show what the setting does to the baseline",
              "command": " ".join(["python", "bench/cpu_backends.py"] + sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


def paired_ort(work: Path, names: list[str], threads: int, iters: int, spinning: bool | None = None) -> dict:
    """All ORT sessions in one process, called in rotation ``iters`` times: load from other
    processes hits every variant alike, and the per-iteration ratio to ORT FP32 is paired.
    ``spinning``: ORT's idle-thread spinning in every session (None: ``ort_session``'s default);
    with False, an ``ort_fp32_spinning`` session (ORT's default) is added for comparison."""
    from lsgq_compiler.backends.onnx import ort_feed, ort_session

    inputs = read_inputs(work / "inputs.safetensors")
    sessions = {n: ort_session(work / f"{n}.onnx", threads=threads, spinning=spinning) for n in names}
    if spinning is False:
        sessions["ort_fp32_spinning"] = ort_session(work / "ort_fp32.onnx", threads=threads, spinning=True)
        names = [*names, "ort_fp32_spinning"]
    feeds = {n: ort_feed(s, inputs) for n, s in sessions.items()}
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        sessions[n].run(None, feeds[n])
    for i in range(iters):
        for n in names[i % len(names):] + names[: i % len(names)]:
            t = time.perf_counter()
            sessions[n].run(None, feeds[n])
            times[n].append(time.perf_counter() - t)
    base = times["ort_fp32"]
    return {n: {"latency_ms": round(1e3 * float(np.median(t)), 1), "latency_min_ms": round(1e3 * min(t), 1),
                "paired_speedup_vs_ort_fp32": round(float(np.median([b / x for b, x in zip(base, t)])), 2)}
            for n, t in times.items()}


def ort_profile(work: Path, names: tuple[str, ...], threads: int, runs: int = 3) -> dict:
    """Share of ORT kernel time per op type (ORT's profiler): where the time goes, and so the
    bound on what quantizing the linears alone can gain."""
    import collections

    import onnxruntime as ort

    from lsgq_compiler.backends.onnx import ort_feed, uses_lsgq_ops
    from lsgq_compiler.kernels.cpu_attention import ort_library

    inputs = read_inputs(work / "inputs.safetensors")
    out = {}
    for name in names:
        if not (work / f"{name}.onnx").is_file():
            continue
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.enable_profiling = threads, True
        if uses_lsgq_ops(work / f"{name}.onnx"):
            so.register_custom_ops_library(ort_library())
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.profile_file_prefix = str(work / f"profile_{name}")
        sess = ort.InferenceSession(str(work / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
        feed = ort_feed(sess, inputs)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
        agg: dict[str, float] = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                agg[e["args"]["op_name"]] += e["dur"]
        total = sum(agg.values())
        out[name] = {"kernel_ms_per_run": round(total / runs / 1e3, 1),
                     "share_percent": {k: round(100 * v / total, 1) for k, v in agg.most_common(10)}}
    return out


def psnr_frames(vsr, inputs: dict, fp: np.ndarray, out: np.ndarray) -> float:
    from lsgq_compiler.vsr.metrics import psnr

    z = inputs["hidden_states"].float()

    def frames(y):
        return vsr.latent_to_video((torch.from_numpy(y).float() + z + 1.0) * 0.5 if vsr.residual
                                   else (torch.from_numpy(y).float() + 1.0) * 0.5)

    return round(psnr(frames(fp), frames(out)), 2)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def markdown(result: dict) -> str:
    lines = ["| variant | latency ms | speedup (same runtime FP32) | vs torch FP32 | peak RSS delta MB | file MB | "
             "SQNR vs FP32 dB | SQNR vs torch quantized dB | PSNR frames vs FP32 dB | PSNR frames vs torch quantized dB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in result["variants"].items():
        size = f"{r['file_bytes'] / 1e6:.2f}" if "file_bytes" in r else "-"
        lines.append(f"| {v} | {r['latency_ms']} | {r.get('speedup', '-')} | {r.get('speedup_vs_torch_fp32', '-')} | "
                     f"{r['peak_rss_delta_mb']} | {size} | {r['sqnr_vs_fp32_db']} | "
                     f"{r.get('sqnr_vs_torch_quantized_db', '-')} | {r.get('psnr_frames_vs_fp32_db', '-')} | "
                     f"{r.get('psnr_frames_vs_torch_quantized_db', '-')} |")
    for key in ("ort_paired", "ort_paired_no_spinning"):
        if result.get(key):
            lines += ["", f"| ORT variant ({key}: one process, rotated calls) | median ms | min ms | "
                          "paired speedup vs ORT FP32 |", "|---|---|---|---|"]
            lines += [f"| {v} | {r['latency_ms']} | {r['latency_min_ms']} | {r['paired_speedup_vs_ort_fp32']} |"
                      for v, r in result[key].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
