"""``lsgq export-onnx``."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


from .export import export_lowered
from .lower import ACT_MODES, ATTENTION_KERNELS, lower_onnx
from .runtime import INTEGER_OPS, op_counts, ort_session

def add_export_onnx_parser(subparsers) -> argparse.ArgumentParser:
    """``lsgq export-onnx``: quantize the shipped model (or load an artifact) and write ONNX."""
    p = subparsers.add_parser("export-onnx", help="export a quantized model to ONNX (onnxruntime integer kernels)")
    p.add_argument("--out", default="model.onnx", help="ONNX file to write (default: model.onnx)")
    p.add_argument("--artifact", default=None, help="a folder written by save_quantized (else: compile now)")
    p.add_argument("--recipe", default="minmax")
    p.add_argument("--bits", default="8", help="weight bits, or W/A as '4/8' (default 8 = W8A8)")
    p.add_argument("--act", choices=ACT_MODES, default="tensor",
                   help="8-bit activations: per-tensor dynamic (default, fastest), the plan's per-token "
                        "quantizer (exact, slower), or per-tensor static from calibration")
    p.add_argument("--w4-block", type=int, default=128)
    p.add_argument("--standard-ops", action="store_true",
                   help="standard ONNX ops only (no com.microsoft.MultiHeadAttention): for runtimes other than "
                        "onnxruntime")
    p.add_argument("--attention-bits", type=int, choices=(8,), default=None,
                   help="8-bit attention where the plan's measurement allows it (default: float attention)")
    p.add_argument("--attention-kernel", choices=ATTENTION_KERNELS, default="ort",
                   help="8-bit attention as onnxruntime's own integer ops (ort) or lsgq's fused AVX-512 VNNI "
                        "custom op com.lsgq::Int8Attention (lsgq; ort_session registers it)")
    p.add_argument("--frames", type=int, default=8, help="LQ clip frames (default 8)")
    p.add_argument("--size", type=int, default=32, help="LQ clip height = width (default 32: 128x128 output)")
    p.add_argument("--weights", default=None, help="TinyVSR weights (default: the shipped ones)")
    p.set_defaults(fn=_cmd_export_onnx)
    return p


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from lsgq_compiler import QuantConfig, compile_quantized
    from lsgq_compiler.vsr.models import load_tiny_vsr

    vsr = load_tiny_vsr(args.weights)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, args.frames, args.size, args.size, generator=g)
    inputs = vsr.transformer_inputs(lq)
    if args.artifact:
        from .artifacts import load_quantized

        qm = load_quantized(args.artifact, vsr.transformer, inputs)
    else:
        wb, _, ab = args.bits.partition("/")
        qm = compile_quantized(vsr.transformer, inputs, QuantConfig(recipe=args.recipe, weight_bits=int(wb),
                                                                    act_bits=int(ab or wb),
                                                                    attention_bits=args.attention_bits),
                               calib_data=[inputs], progress=False)
    calib = [vsr.transformer_inputs(torch.rand(lq.shape, generator=g)) for _ in range(2)]
    lowered = lower_onnx(qm, args.act, args.w4_block, calib, inputs, attention_kernel=args.attention_kernel)
    path = export_lowered(lowered, args.out, inputs, contrib_ops=not args.standard_ops)
    opt = Path(args.out).with_suffix(".ort-optimized.onnx")
    ort_session(path, optimized_path=opt)
    ints = {k: v for k, v in op_counts(opt).items() if k in INTEGER_OPS}
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); onnxruntime integer kernels: {ints or 'none'}")
    for r in lowered.report():
        if r.get("real_kernel") is not None:
            print(f"  {r['layer']:<40} {r['format']:<6} {r['kernel']}  real={r['real_kernel']}")
    return 0
