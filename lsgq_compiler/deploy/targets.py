"""Deploy targets: which layer formats each target runs, and on which kernel.

A *kind* is one deployable linear form, with exact numerics (see :mod:`.numerics`):

=============  =====================================================  ===========================
kind           numerics                                               kernel (op)
=============  =====================================================  ===========================
int4r_fp8      weights int4 symmetric per output row (float32         ``lsgq::rot_fp8_linear``
               scale); activations FP8 e4m3 per row (amax / 448)      (Triton rotate+quantize
                                                                      prologue, codes unpacked
                                                                      to FP8 in one pass, FP8
                                                                      rowwise ``_scaled_mm``)
int4_fp8       weights int4 symmetric, groups of 128 along K, bf16    ``lsgq::int4_fp8_linear``
               scales; activations FP8 e4m3 per row (amax / 448)      (mslk ``f8i4bf16_shuffled``)
int4_weight    weights as int4_fp8; activations unquantized (16-bit)  ``lsgq::int4_weight_linear``
fp8_row        weights and activations FP8 e4m3 per row               ``lsgq::rot_fp8_linear``
                                                                      (``torch._scaled_mm`` rowwise)
int8_row       weights int8 symmetric per row; activations int8       ``lsgq::int8_linear``
               symmetric per token, dynamic (amax / 127)              (``torch._int_mm``)
sim            the plan's own quantizers (any format), simulated      dequantize + ``aten.linear``
fp             full precision                                         ``aten.linear``
=============  =====================================================  ===========================

Why two int4 x FP8 kinds: at the token counts of one-step video SR (M = 14k .. 18k rows) every
linear is compute-bound, so the GEMM's speed is what counts. ``int4r_fp8`` stores 4-bit codes
(half of FP8's bytes) but multiplies on the FP8 tensor cores at FP8 rowwise speed; unpacking a
layer's codes to FP8 costs one pass over 1.5 bytes per weight, about 4 ms per call for 5.6 B
weights on an H200. Per-row scales are what makes that exact: a code times its row scale is an
FP8 value times the GEMM's column scale. ``int4_fp8`` (groups of 128, mslk's CUTLASS mixed-input
kernel, target ``cuda-sm90-g128``) is the finer grid, for small M, where reading 4-bit weights
is what pays.

Per target (:data:`TARGETS`): the kinds it runs and how a plan's format maps onto them
(:func:`resolve`). Formats a target cannot run become the nearest kind it can (4-bit activations
on Hopper become FP8 per row; W6 becomes W8), and the layer's ``extra["target"]`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GROUP = 128

#: kind -> (human format, the GEMM op, whether that op computes on low-precision data, on which device)
KINDS: dict[str, dict[str, Any]] = {
    "int4r_fp8": {"format": "W4 int4 sym per row (fp32 scales) x A8 FP8 e4m3 per row", "op": "lsgq::rot_fp8_linear",
                  "weight_bits": 4, "act_bits": 8},
    "int4_fp8": {"format": "W4 int4 sym g128 (bf16 scales) x A8 FP8 e4m3 per row", "op": "lsgq::int4_fp8_linear",
                 "weight_bits": 4, "act_bits": 8},
    "int4_weight": {"format": "W4 int4 sym g128 (bf16 scales), A16", "op": "lsgq::int4_weight_linear",
                    "weight_bits": 4, "act_bits": None},
    "fp8_row": {"format": "W8A8 FP8 e4m3 per row (weights and activations)", "op": "lsgq::rot_fp8_linear",
                "weight_bits": 8, "act_bits": 8},
    "int8_row": {"format": "W8A8 int8 sym (weights per row, activations per token, dynamic)",
                 "op": "lsgq::int8_linear", "weight_bits": 8, "act_bits": 8},
}


@dataclass(frozen=True)
class Target:
    """One deploy target.

    Args:
        name: e.g. ``"cuda-sm90"``.
        device: ``"cuda"`` or ``"cpu"``.
        min_capability: the CUDA compute capability it needs (None for the CPU).
        real: kind -> True where the kernel computes on low-precision data on this target.
        doc: one line for the README table.
        tested: where the real kernels were run (honest: only what was measured).
    """

    name: str
    device: str
    min_capability: tuple[int, int] | None
    real: dict[str, bool] = field(default_factory=dict)
    doc: str = ""
    tested: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.real)


TARGETS: dict[str, Target] = {
    "sim": Target("sim", "any", None, {}, "any format, simulated in float (today's behaviour)"),
    "cuda-sm90": Target("cuda-sm90", "cuda", (9, 0),
                        {"int4r_fp8": True, "int4_weight": True, "fp8_row": True},
                        "Hopper: int4 weights (per row) x FP8 activations on the FP8 tensor cores, int4 "
                        "weight-only, FP8 rowwise W8A8", "H200 (bench/deploy_gpu.py)"),
    "cuda-sm90-g128": Target("cuda-sm90-g128", "cuda", (9, 0),
                             {"int4_fp8": True, "int4_weight": True, "fp8_row": True},
                             "Hopper: int4 weights in groups of 128 x FP8 activations (mslk f8i4bf16_shuffled, "
                             "needs mslk-cuda), int4 weight-only, FP8 rowwise W8A8", "H200 (bench/deploy_gpu.py)"),
    "cuda-sm100": Target("cuda-sm100", "cuda", (10, 0),
                         {"int4r_fp8": True, "int4_weight": True, "fp8_row": True},
                         "Blackwell: as sm90 (FP8 rowwise through torch._scaled_mm)", "not run here"),
    "cuda-sm89": Target("cuda-sm89", "cuda", (8, 9),
                        {"int4r_fp8": True, "int4_weight": True, "fp8_row": True},
                        "Ada: int4 (per row) x FP8 and FP8 rowwise W8A8 through torch._scaled_mm, int4 "
                        "weight-only", "not run here"),
    "cuda-sm80": Target("cuda-sm80", "cuda", (8, 0),
                        {"int4_weight": True, "int8_row": True},
                        "Ampere: int8 W8A8 (cuBLAS), int4 weight-only (no FP8)", "not run here"),
    "cpu": Target("cpu", "cpu", None,
                  {"int8_row": True, "int4_weight": False},
                  "x86 CPU: int8 dynamic W8A8 (torch._int_mm); int4 weights stored packed, dequantized for "
                  "a float GEMM (real 4-bit arithmetic only through export_onnx's MatMulNBits)",
                  "this CPU (tests/deploy)"),
}
TARGET_NAMES: tuple[str, ...] = tuple(TARGETS)


def resolve(target: str, weight_bits: int | None, act_bits: int | None, in_features: int) -> tuple[str, str]:
    """The kind a layer of ``W{weight_bits}A{act_bits}`` with ``in_features`` K runs as on ``target``.

    Returns:
        ``(kind, note)``: ``kind`` one of :data:`KINDS`, ``"fp"`` (full precision) or ``"sim"``;
        ``note`` says what changed (empty when nothing did).
    """
    if weight_bits is None and act_bits is None:
        return "fp", ""
    if target == "sim":
        return "sim", ""
    t = TARGETS[target]
    w4 = weight_bits is not None and weight_bits <= 4
    notes = []
    if w4 and act_bits is not None and "int4r_fp8" in t.kinds and in_features % 16 == 0:
        kind = "int4r_fp8"
        if weight_bits != 4:
            notes.append(f"W{weight_bits} -> W4")
        if act_bits != 8:
            notes.append(f"A{act_bits} -> A8 FP8 e4m3 per row")
        return kind, "; ".join(notes)
    grouped = in_features % GROUP == 0
    if w4 and not grouped:
        notes.append(f"K={in_features} is not a multiple of {GROUP}: no int4 g{GROUP} kernel, W{weight_bits} -> W8")
    if w4 and grouped:
        if act_bits is not None and "int4_fp8" in t.kinds:
            kind = "int4_fp8"
        else:
            kind = "int4_weight"
    else:
        kind = "fp8_row" if "fp8_row" in t.kinds else "int8_row"
    k = KINDS[kind]
    if weight_bits is not None and weight_bits != k["weight_bits"] and not (w4 and not grouped):
        notes.append(f"W{weight_bits} -> W{k['weight_bits']}")
    if weight_bits is None:
        notes.append(f"16-bit weights -> W{k['weight_bits']} (no A-only kernel)")
    if act_bits != k["act_bits"]:
        new = "A16 (16-bit activations)" if k["act_bits"] is None else ("A8 FP8 e4m3 per row" if kind != "int8_row"
                                                                       else "A8 int8 per token")
        notes.append(f"A{act_bits or 16} -> {new}")
    return kind, "; ".join(notes)


def check_device(target: str, device: Any) -> None:
    """Raise a clear error when ``device`` cannot run ``target``'s kernels."""
    import torch

    from lsgq_compiler.errors import user_error

    t = TARGETS[target]
    dev = torch.device(device)
    if t.device == "any" or t.device == "cpu" and dev.type == "cpu":
        return
    if t.device == "cpu":
        raise user_error(f"this checkpoint was made for target 'cpu' and cannot run on {dev}",
                         "load it with device='cpu', or re-quantize with a CUDA target")
    if dev.type != "cuda":
        raise user_error(f"this checkpoint was made for target {target!r} (a CUDA GPU of compute capability >= "
                         f"{t.min_capability[0]}.{t.min_capability[1]}); device={dev} cannot run its kernels",
                         "load it with device='cuda' on such a GPU, or pass allow_reference=True to run the "
                         "float reference of the same numbers on the CPU (slow, for checking)")
    if not torch.cuda.is_available():
        raise user_error(f"target {target!r} needs CUDA, which this torch build cannot use",
                         "install a CUDA build of torch, or load with device='cpu', allow_reference=True")
    cap = torch.cuda.get_device_capability(dev)
    if cap < t.min_capability:
        raise user_error(f"target {target!r} needs compute capability >= {t.min_capability[0]}.{t.min_capability[1]}; "
                         f"this GPU ({torch.cuda.get_device_name(dev)}) has {cap[0]}.{cap[1]}",
                         "re-quantize for this GPU's target (e.g. target='cuda-sm80' on an A100)")
