"""Export a :class:`QuantizedModel` to ONNX graphs that onnxruntime runs with integer kernels.

Shape notation: ``x: (..., K)``, weights laid out ``(K, N)`` as ONNX MatMul wants them.

Each quantized linear becomes a torch custom op (``lsgq_onnx::*``) with a reference
implementation (so the lowered torch model runs the export's semantics) and an ONNX
translation (``custom_translation_table`` of ``torch.onnx.export(dynamo=True)``):

- **W8A8, per tensor** (default ``act="tensor"``): ``DynamicQuantizeLinear`` (uint8, per
  tensor) -> ``MatMulInteger`` with symmetric per-channel 8-bit weights; ORT fuses it into
  ``DynamicQuantizeMatMul``. Fastest; per-tensor activations deviate from a per-token plan.
- **W8A8, per token** (``act="token"``): the plan's own dynamic activation quantizer (per
  token, asymmetric or symmetric) written as ONNX arithmetic, giving uint8 codes, and the
  plan's own weight codes as uint8 with a per-column zero point: ``MatMulInteger``
  (integer GEMM) plus an exact zero-point correction. The torch fake-quant model's numbers,
  but ORT runs the quantization and the per-token epilogue as separate elementwise ops
  (no fused kernel, and ``MatMulInteger`` takes no per-row zero point), which costs more
  than the int8 GEMM saves at DOVE-like widths on CPU.
- **W8A8, static** (``act="static"``): QDQ with calibrated uint8 per-tensor input and
  output, 8-bit per-channel weights and an int32 bias (scale ``s_x s_w``): ORT fuses
  ``DQ -> MatMul -> Add -> Q`` into ``QGemm``.

8-bit weights are always stored as **uint8** (symmetric codes + 128, zero point 128), never int8:
onnxruntime's x86 integer GEMMs multiply uint8 x int8 with int16 saturation on CPUs without VNNI
(AVX2 and older; measured 21-24 dB against the torch model on an AVX-only host), while uint8 x
uint8 takes the exact widening path on every x86 CPU; the values are the same.
- **4-bit weights** (W4A16, W4A8): ``DequantizeLinear`` of packed uint4 weights, blocked on
  axis 0 (opset 21), feeding ``MatMul``: ORT fuses it into ``MatMulNBits`` when the block is
  a power of two >= 16 (``w4_block`` requantizes per-row weights into such blocks).
- **everything else** (W4A4, W6A6, DRAQ...): the plan's activation fake quantizer as float
  ops (identical to the torch model) and ``DequantizeLinear`` of the weight codes: a
  simulation, reported as ``real_kernel: False``.

Per-token dynamic activation quantization has no fused ORT kernel: ``token`` spells it out;
``tensor`` and ``static`` trade exactness for per-tensor activations (a deviation from a
per-token plan, stated in each layer's note).


One job per file: :mod:`.ops` (custom ops and their ONNX translations), :mod:`.cores` (per-layer
integer cores), :mod:`.lower` (QuantizedModel -> cores and attention ops), :mod:`.rewrite`
(export-graph rewrites), :mod:`.export` (writing ``.onnx`` files), :mod:`.runtime` (onnxruntime
sessions with lsgq's custom-op library), :mod:`.cli` (``lsgq export-onnx``).
"""
from .cli import add_export_onnx_parser
from .cores import DQCore, DynamicInt8Core, StaticInt8Core, TokenInt8Core, container_bits, nbits_fusable, weight_codes
from .export import OPSET, export_float_onnx, export_lowered, export_onnx
from .lower import ACT_MODES, ATTENTION_KERNEL, ATTENTION_KERNELS, LSGQ_ATTENTION_KERNEL, lower_onnx
from .rewrite import export_graph, fold_lowbit_casts
from .runtime import INTEGER_OPS, op_counts, ort_feed, ort_session, uses_lsgq_ops

__all__ = ["ACT_MODES", "ATTENTION_KERNEL", "ATTENTION_KERNELS", "DQCore", "DynamicInt8Core", "INTEGER_OPS",
           "LSGQ_ATTENTION_KERNEL", "OPSET", "StaticInt8Core", "TokenInt8Core", "add_export_onnx_parser",
           "container_bits", "export_float_onnx", "export_graph", "export_lowered", "export_onnx",
           "fold_lowbit_casts", "lower_onnx", "nbits_fusable", "op_counts", "ort_feed", "ort_session",
           "uses_lsgq_ops", "weight_codes"]
