"""Deploy modules: a quantized linear holding plain tensors in a kernel's layout, and the 8-bit
attention processor. Neither subclasses ``nn.Linear`` (diffusers' layerwise casting would cast
their buffers), neither needs a graph capture: they run at any input shape and under
``torch.compile``.

:class:`DeployLinear` computes, for ``x: (..., K) -> (..., N)``, in the order
:class:`~lsgq_compiler.qlinear.QuantLinear` does (so the CPU reference is bit-exact with the
fake-quant model)::

    x_s = x / smooth                                  # optional
    y   = kernel(rotate(x_s)) + bias + (x_s L_down^T) L_up^T

With ``lowrank_in_gemm`` (per-row FP8 kinds) the low-rank branch runs inside the FP8 GEMM as
``rank`` extra columns (:func:`~lsgq_compiler.deploy.numerics.lowrank_in_gemm_linear`), and on CUDA
smoothing, rotation and the low-rank projection are one Triton prologue.

``kernel`` by ``kind`` (:mod:`.targets`): ``int4r_fp8``, ``int4_fp8``, ``int4_weight``, ``fp8_row``,
``int8_row`` (real kernels through :mod:`lsgq_compiler.kernels.deploy_ops` on CUDA; on the CPU
``int8_row`` runs ``torch._int_mm`` and the others a float reference of the same numbers) or
``sim`` (the plan's own quantizers: integer weight codes dequantized, activation quantizer
simulated).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lsgq_compiler.hadamard import rotate, rotate_matmul
from lsgq_compiler.quantizers import ActQuant

from . import numerics as nx
from .targets import KINDS

GROUP = nx.GROUP


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` uint8 values < 16 -> ``(N, ceil(K / 2))`` uint8, low nibble first."""
    if q.shape[-1] % 2:
        q = F.pad(q, (0, 1))
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_nibbles(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles` for a last dim of ``k``."""
    return torch.stack((p & 0xF, p >> 4), dim=-1).reshape(*p.shape[:-1], -1)[..., :k]


def _empty(shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


class DeployLinear(nn.Module):
    """One planned linear in deploy form. Built empty from its layer config (``layer_config()``
    of a saved one) and filled by ``load_state_dict(..., assign=True)``, or filled from a
    compiled layer by :meth:`from_quant_linear`.

    Layer config keys: ``kind``, ``in_features``, ``out_features``, ``bias`` (bool), ``rank``,
    ``rot_block``, ``smooth`` (bool), ``dtype`` (float dtype of bias/smooth), and for ``kind == "sim"``
    ``weight`` (``bits``, ``granularity``, ``group_size``, ``symmetric``, ``stored``: ``codes`` or
    ``dequantized``) and ``act`` (None or ``bits``, ``mode``, ``granularity``, ``symmetric``,
    ``group_size``, ``static`` buffers present).
    """

    def __init__(self, cfg: dict[str, Any], device: Any = "meta") -> None:
        super().__init__()
        self.cfg = dict(cfg)
        kind, n, k = cfg["kind"], cfg["out_features"], cfg["in_features"]
        dt = getattr(torch, cfg.get("dtype", "float32"))
        self.kind, self.in_features, self.out_features = kind, k, n
        self.rot_block = int(cfg.get("rot_block", 0))
        reg = self.register_buffer
        reg("bias", _empty((n,), dt, device) if cfg.get("bias") else None)
        reg("smooth", _empty((k,), dt, device) if cfg.get("smooth") else None)
        reg("rot_signs", _empty((k,), dt, device) if self.rot_block else None)
        r = int(cfg.get("rank", 0))
        reg("lr_down", _empty((r, k), torch.bfloat16, device) if r else None)
        reg("lr_up", _empty((n, r), torch.bfloat16, device) if r else None)
        self.aq: nn.Module | None = None
        if kind == "int4r_fp8":
            reg("qweight", _empty((n, (k + 1) // 2), torch.uint8, device))
            reg("w_scale", _empty((n,), torch.float32, device))
        elif kind in ("int4_fp8", "int4_weight"):
            reg("qweight", _empty((n, k // 2), torch.uint8, device))
            reg("scales", _empty((n, k // GROUP), torch.bfloat16, device))
        elif kind == "fp8_row":
            reg("w_fp8", _empty((n, k), torch.float8_e4m3fn, device))
            reg("w_scale", _empty((n,), torch.float32, device))
        elif kind == "int8_row":
            reg("w_int8", _empty((n, k), torch.int8, device))
            reg("w_scale", _empty((n,), torch.float32, device))
        elif kind == "sim":
            w = cfg["weight"]
            if w["stored"] == "codes":
                g = 1 if w["granularity"] == "row" else k // w["group_size"]
                kk = (k + 1) // 2 if w["bits"] <= 4 else k
                reg("w_codes", _empty((n, kk), torch.uint8, device))
                reg("w_scale", _empty((n, g), torch.float32, device))
                reg("w_zero", _empty((n, g), torch.int16, device))
            else:
                reg("w_dq", _empty((n, k), dt, device))
            a = cfg.get("act")
            if a is not None:
                self.aq = _make_act_quant(a, k, device)
        else:
            raise ValueError(f"unknown deploy kind {kind!r}")
        self._packed: dict[str, torch.Tensor] | None = None  # kernel layout on CUDA (not saved)
        #: the :class:`SharedPrologue` of the layers reading this one's input (set by :func:`share_prologues`; not saved)
        self._shared: SharedPrologue | None = None
        self._shared_index = 0
        #: the preceding activation moved into this layer by :func:`fuse_gelu` (0: none, 1: tanh-GELU); not saved
        self.input_act = 0
        self._dtypes = {n: b.dtype for n, b in self._buffers.items()
                        if b is not None and n not in ("bias", "smooth", "rot_signs")}

    def restore_dtypes(self) -> None:
        """Cast the stored tensors back to their storage dtypes (exact: the values are on those grids),
        after a loader (diffusers) cast floating tensors to another dtype."""
        for n, dt in self._dtypes.items():
            b = getattr(self, n)
            if b is not None and b.dtype != dt:
                setattr(self, n, b.to(dt))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_quant_linear(cls, m: nn.Module, kind: str) -> "DeployLinear":
        """Deploy form of a compiled :class:`~lsgq_compiler.qlinear.QuantLinear` ``m``."""
        from lsgq_compiler.quantizers import WeightQuant

        s = m.spec
        w = m.weight.detach()
        cfg: dict[str, Any] = {"kind": kind, "in_features": m.in_features, "out_features": m.out_features,
                               "bias": m.bias is not None, "rank": 0 if m.lr_down is None else int(m.lr_down.shape[0]),
                               "rot_block": int(m.rot_block), "smooth": m.smooth is not None,
                               "dtype": str(w.dtype).replace("torch.", "")}
        if m.lr_down is not None and getattr(m, "lowrank_in_gemm", False) and kind in ("int4r_fp8", "fp8_row"):
            cfg["lowrank_in_gemm"] = True
        if kind == "sim":
            if isinstance(m.wq, WeightQuant) and type(m.wq) is WeightQuant:
                cfg["weight"] = {"bits": s.weight_bits, "granularity": m.wq.granularity, "group_size": m.wq.group_size,
                                 "symmetric": m.wq.symmetric, "stored": "codes"}
            elif m.wq is None and s.weight_bits is None:
                cfg["weight"] = {"bits": None, "stored": "dequantized"}
            else:
                cfg["weight"] = {"bits": s.weight_bits, "stored": "dequantized", "quantizer": type(m.wq).__name__}
            cfg["act"] = _act_config(m)
        out = cls(cfg, device=w.device)
        with torch.no_grad():
            if m.bias is not None:
                out.bias = m.bias.detach().clone()
            if m.smooth is not None:
                out.smooth = m.smooth.detach().clone()
            if m.rot_block:
                out.rot_signs = m.rot_signs.detach().clone()
            if m.lr_down is not None:
                out.lr_down = m.lr_down.detach().to(torch.bfloat16)
                out.lr_up = m.lr_up.detach().to(torch.bfloat16)
            if kind == "int4r_fp8":
                codes, out.w_scale = nx.quantize_weight_int4_row(w)
                out.qweight = pack_nibbles((codes.to(torch.int16) + 8).to(torch.uint8))
            elif kind in ("int4_fp8", "int4_weight"):
                codes, scales = nx.quantize_weight_int4_g128(w)
                out.qweight = pack_nibbles((codes.to(torch.int16) + 8).to(torch.uint8))
                out.scales = scales
            elif kind == "fp8_row":
                out.w_fp8, out.w_scale = nx.quantize_weight_fp8_row(w)
            elif kind == "int8_row":
                out.w_int8, out.w_scale = nx.quantize_weight_int8_row(w)
            elif cfg["weight"]["stored"] == "codes":
                from lsgq_compiler.quant import quantize_to_int

                c = cfg["weight"]
                q, scale, zero = quantize_to_int(w.float(), c["bits"], c["symmetric"], c["granularity"], c["group_size"])
                off = 2 ** (c["bits"] - 1) if c["symmetric"] else 0
                codes = (q.to(torch.int16) + off).to(torch.uint8).reshape(w.shape)
                out.w_codes = pack_nibbles(codes) if c["bits"] <= 4 else codes
                out.w_scale = scale.float().reshape(w.shape[0], -1)
                out.w_zero = (zero + off).to(torch.int16).reshape(w.shape[0], -1)
            else:
                out.w_dq = (m.wq(w) if m.wq is not None else w).detach().clone()
            if out.aq is not None:
                for name, buf in m.aq.named_buffers():
                    if buf is not None:
                        setattr(out.aq, name, buf.detach().clone())
        return out

    def layer_config(self) -> dict[str, Any]:
        return dict(self.cfg)

    # ------------------------------------------------------------------ weights
    def _codes_int4(self) -> torch.Tensor:
        self._check_not_released()
        return unpack_nibbles(self.qweight, self.in_features).to(torch.int16).sub(8).to(torch.int8)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 ``(N, K)`` weight the kernel multiplies."""
        k = self.kind
        if k == "int4r_fp8":
            return self._codes_int4().float() * self.w_scale[:, None]
        if k in ("int4_fp8", "int4_weight"):
            return nx.dequantize_int4_g128(self._codes_int4(), self.scales, kernel="fp8" if k == "int4_fp8" else "bf16")
        if k == "fp8_row":
            self._check_not_released()
            return self.w_fp8.float() * self.w_scale[:, None]
        if k == "int8_row":
            return self.w_int8.float() * self.w_scale[:, None]
        c = self.cfg["weight"]
        if c["stored"] != "codes":
            return self.w_dq.float()
        n, kk = self.out_features, self.in_features
        codes = unpack_nibbles(self.w_codes, kk) if c["bits"] <= 4 else self.w_codes
        g = self.w_scale.shape[1]
        q = codes.reshape(n, g, kk // g).float()
        return ((q - self.w_zero.float()[..., None]) * self.w_scale[..., None]).reshape(n, kk)

    def prepare(self, release: bool = True) -> None:
        """Build the kernel layout on this module's device (CUDA); a no-op on the CPU.

        ``release``: drop the stored codes afterwards (the kernel layout is a second copy of the
        same weights); the layer then runs but cannot be saved or dequantized again."""
        if self._packed is not None or self.kind not in ("int4_fp8", "int4_weight", "int4r_fp8", "fp8_row") \
                or self._scale_tensor().device.type != "cuda":
            return
        if self.kind in ("int4r_fp8", "fp8_row"):
            self._packed = self._fp8_operands()
            if release and self._packed["lr_down"] is not None:  # the kernel form replaces the stored factors
                self.lr_down, self.lr_up = self.lr_down.new_empty((0,)), self.lr_up.new_empty((0,))
                if self.kind == "fp8_row":  # the (N, K + 3R) copy with the low-rank columns replaces it
                    self.w_fp8 = self.w_fp8.new_empty((0,))
                self._released = True
            return
        from lsgq_compiler.kernels import deploy_ops as ops

        codes = self._codes_int4()
        if self.kind == "int4_fp8":
            self._packed = ops.to_kernel_layout(ops.pack_int4_for_cuda(codes, self.scales), self.scales.device)
        else:
            self._packed = {"qweight": ops.pack_int4(codes), "scales": self.scales}
        del codes
        if release:  # the kernel layout replaces the stored codes: one copy of the weights on the GPU
            empty = self.qweight.new_empty((0,))
            self.qweight = empty
            if self.kind == "int4_fp8":
                self.scales = self.scales.new_empty((0,))
            self._released = True

    def _scale_tensor(self) -> torch.Tensor:
        """The layer's weight-scale buffer (its device is where the kernel layout is built)."""
        return self.scales if self.kind in ("int4_fp8", "int4_weight") else self.w_scale

    def _fp8_operands(self) -> dict[str, Any]:
        """The operands of ``lsgq::rot_fp8_linear`` for this layer (kinds ``int4r_fp8`` / ``fp8_row``):
        ``weight``, ``col (K,)`` float32 = rotation signs / smooth (None if neither), ``block``, and with
        the low-rank branch in the GEMM ``lr_down (r, K)`` bf16 = ``L_down * signs / c`` and ``lr_up
        (N, 2R)`` float8_e4m3fn, the split (hi, lo) columns of ``L_up c / w_scale``
        (:func:`~lsgq_compiler.kernels.fp8_prologue.lowrank_weight_cols`; appended to an FP8 weight).
        Built once by :meth:`prepare` on CUDA."""
        if self._packed is not None:
            return self._packed
        col = self.rot_signs.float() if self.rot_block else None
        if self.smooth is not None:
            col = 1.0 / self.smooth.float() if col is None else col / self.smooth.float()
        weight = self.qweight if self.kind == "int4r_fp8" else self.w_fp8
        down = up = None
        if self.cfg.get("lowrank_in_gemm") and self.lr_down is not None:
            c = nx.lowrank_col_scale(self.lr_down)
            d = self.lr_down.float() / c[:, None]
            down = (d * self.rot_signs.float() if self.rot_block else d).to(torch.bfloat16)
            from lsgq_compiler.kernels import fp8_prologue as fp

            up = fp.lowrank_weight_cols(self.lr_up.float() * c[None, :] / self.w_scale[:, None])
            if self.kind == "fp8_row":
                weight, up = fp._append_rank_cols(self.w_fp8, up), None
        return {"weight": weight, "col": col, "block": self.rot_block, "lr_down": down, "lr_up": up}

    def _check_not_released(self) -> None:
        if getattr(self, "_released", False):
            from lsgq_compiler.errors import user_error

            raise user_error(f"this {self.kind} layer holds only its GPU kernel layout (the stored weights were "
                             "released by prepare() to keep one copy of them)",
                             "load the checkpoint again (lsgq_compiler.from_pretrained(..., device='cpu')) to read "
                             "or save its weights")

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        self._check_not_released()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    # ------------------------------------------------------------------ forward
    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if x.is_cuda and kind in KINDS:
            return _cuda_gemm(self, x)
        if kind == "int8_row":
            lead = x.shape[:-1]
            q, s = nx.quantize_act_int8_token(x.reshape(-1, self.in_features))
            if q.shape[0] > 16:
                acc = torch._int_mm(q, self.w_int8.t())
            else:  # torch._int_mm needs more than 16 rows: same integer products in float64 (exact)
                acc = (q.double() @ self.w_int8.double().t())
            y = acc.float() * s * self.w_scale[None, :]
            if self.bias is not None:
                y = y + self.bias.float()
            return y.to(x.dtype).reshape(*lead, self.out_features)
        if kind in ("int4r_fp8", "int4_fp8", "fp8_row"):
            xq = nx.quantize_act_fp8_row(x).to(x.dtype)
        elif kind == "int4_weight":
            xq = x
        else:
            xq = self.aq(x) if self.aq is not None else x
        return F.linear(xq, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., K)`` -> ``(..., N)`` (with :attr:`input_act`: ``act(x)`` first). In a
        :class:`SharedPrologue` the first member computes every member's output of ``x`` and the others
        return theirs when called on the same tensor."""
        if self._shared is not None:
            y = self._shared.take(self._shared_index, x)
            if y is not None:
                return y
        return self._forward(x)

    def _fused_kernel(self) -> bool:
        """True when this layer's CUDA forward is one ``rot_fp8_linear`` call (smoothing, rotation and the
        low-rank branch inside the op)."""
        return self.kind in ("int4r_fp8", "fp8_row") and (self.lr_down is None or bool(self.cfg.get("lowrank_in_gemm")))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """This layer alone (:meth:`forward` without the shared prologue)."""
        fused = x.is_cuda and self.kind in ("int4r_fp8", "fp8_row")
        if x.is_cuda and self._fused_kernel():
            return _cuda_gemm(self, x, act=self.input_act)  # activation, smoothing, rotation, low-rank in the op
        if self.input_act:
            from lsgq_compiler.kernels.fp8_prologue import apply_act

            x = apply_act(x, self.input_act)
        if self.smooth is not None:
            x = x / self.smooth.to(x.dtype)
        if self.cfg.get("lowrank_in_gemm") and self.lr_down is not None:  # CPU: the same numbers in float
            xr = rotate(x, self.rot_signs, self.rot_block) if self.rot_block else x
            return nx.lowrank_in_gemm_linear(xr, x, self.dequantized_weight().to(x.dtype), self.w_scale, self.bias,
                                             self.lr_down.to(x.dtype), self.lr_up.to(x.dtype))
        if fused:  # an older checkpoint: low-rank branch beside the kernel, accumulated by addmm
            y = _cuda_gemm(self, x, smoothed=True)
            z = F.linear(x, self.lr_down.to(x.dtype)).reshape(-1, self.lr_down.shape[0])
            return torch.addmm(y.reshape(-1, self.out_features), z, self.lr_up.to(x.dtype).t()).reshape(y.shape)
        y_lr = None
        if self.lr_down is not None:
            y_lr = F.linear(F.linear(x, self.lr_down.to(x.dtype)), self.lr_up.to(x.dtype))
        if self.rot_block:  # on GPUs as tensor-core matmuls; on the CPU the butterflies of the fake-quant model
            x = (rotate_matmul if x.is_cuda else rotate)(x, self.rot_signs, self.rot_block)
        y = self._gemm(x)
        return y if y_lr is None else y + y_lr

    def kernel_info(self, device: str = "cpu") -> dict[str, Any]:
        """``backend``, ``kernel``, ``real_kernel`` on ``device`` (what ``report()`` rows carry)."""
        if self.kind == "sim":
            return {"backend": "lsgq deploy (sim)", "kernel": "dequantize + aten.linear (simulated)", "real_kernel": False}
        op = KINDS[self.kind]["op"]
        if device == "cuda" and self.kind in ("int4r_fp8", "fp8_row"):
            from lsgq_compiler.kernels import fp8_prologue

            if not fp8_prologue.available(device):
                return {"backend": "lsgq deploy", "kernel": f"{op} reference (float): needs Triton and sm_89+",
                        "real_kernel": False}
            shared = self._shared is not None and self._shared.fused
            return {"backend": "lsgq deploy", "real_kernel": True,
                    "kernel": ("lsgq::rot_fp8_multi_linear" if shared else op)
                    + " (Triton rotate+quantize prologue" + (" shared by q, k, v" if shared else "")
                    + (", int4 -> FP8 unpack" if self.kind == "int4r_fp8" else "") + ", _scaled_mm"
                    + (", low-rank as K + rank FP8 columns)" if self.cfg.get("lowrank_in_gemm") else ")")}
        if device == "cuda":
            return {"backend": "lsgq deploy", "kernel": op, "real_kernel": True}
        if self.kind == "int8_row":
            return {"backend": "lsgq deploy", "kernel": "torch._int_mm (CPU)", "real_kernel": True}
        return {"backend": "lsgq deploy", "kernel": f"{op} CPU reference (float)", "real_kernel": False}

    def extra_repr(self) -> str:
        return f"{self.kind}, in={self.in_features}, out={self.out_features}, rank={self.cfg.get('rank', 0)}, " \
               f"hadamard={self.rot_block}, smooth={bool(self.cfg.get('smooth'))}"


def _act_config(m: nn.Module) -> dict[str, Any] | None:
    from lsgq_compiler.errors import user_error

    aq = m.aq
    if aq is None:
        return None
    name = type(aq).__name__
    if name == "GroupActQuant":
        return {"cls": name, "bits": aq.bits, "mode": aq.mode, "granularity": "group", "symmetric": aq.symmetric,
                "group_size": aq.group_size}
    if type(aq) is ActQuant:
        return {"cls": "ActQuant", "bits": aq.bits, "mode": aq.mode, "granularity": aq.granularity,
                "symmetric": aq.symmetric, "buffers": sorted(k for k, v in aq.named_buffers() if v is not None)}
    if isinstance(aq, nx.TargetActQuant):
        return {"cls": "TargetActQuant", "kind": aq.kind}
    raise user_error(f"{m.spec.module_path}: its activation quantizer {name} has no deploy form",
                     "deploy recipes whose activation quantizers are min/max, static, DRAQ or a target's "
                     "(minmax, lsgquant, smoothquant, quarot, svdquant, viditq)")


def _make_act_quant(a: dict[str, Any], k: int, device: Any) -> nn.Module:
    if a["cls"] == "TargetActQuant":
        return nx.TargetActQuant(a["kind"])
    if a["cls"] == "GroupActQuant":
        from lsgq_compiler.passes.group_size import GroupActQuant

        return GroupActQuant(a["bits"], a["group_size"], a["symmetric"])
    aq = ActQuant(a["bits"], a["mode"], a["granularity"], a["symmetric"])
    for name in a.get("buffers", []):
        shape = (k,) if name == "channel_scale" else ()
        setattr(aq, name, _empty(shape, torch.float32, device))
    return aq


def _cuda_gemm(mod: DeployLinear, x: torch.Tensor, smoothed: bool = False, act: int = 0) -> torch.Tensor:
    """The real kernel on CUDA (:mod:`lsgq_compiler.kernels.deploy_ops`), computing in bf16.
    ``smoothed``: ``x`` is already divided by the layer's smoothing vector; ``act``: the input activation
    the ``rot_fp8_linear`` prologue applies first (other kinds take ``act == 0``)."""
    from lsgq_compiler.errors import user_error

    try:
        from lsgq_compiler.kernels import deploy_ops as ops
    except ImportError as e:
        raise user_error(f"the deploy kernels cannot be loaded ({e})",
                         "pip install 'lsgq-compiler[cuda]' (installs mslk-cuda)", ImportError) from None
    lead = x.shape[:-1]
    x2 = x.reshape(-1, mod.in_features).to(torch.bfloat16)
    bias = None if mod.bias is None else mod.bias.to(torch.bfloat16)
    if act and mod.kind not in ("int4r_fp8", "fp8_row"):
        raise ValueError(f"a {mod.kind} layer cannot apply an input activation in its kernel")
    if mod.kind in ("int4_fp8", "int4_weight"):
        if mod._packed is None:
            mod.prepare()
        if mod.kind == "int4_fp8":
            y = ops.int4_fp8_linear(x2, mod._packed, bias)
        else:
            y = ops.int4_weight_linear(x2, mod._packed["qweight"], mod._packed["scales"], bias)
    elif mod.kind in ("int4r_fp8", "fp8_row"):  # smoothing, rotation, low-rank in the op
        p = mod._fp8_operands()
        col = p["col"]
        if smoothed:  # x already divided by smooth: only the signs remain
            col = mod.rot_signs.float() if mod.rot_block else None
        y = ops.rot_fp8_linear(x2, p["weight"], mod.w_scale, bias, col, p["block"], p["lr_down"], p["lr_up"], act)
    else:
        y = ops.int8_linear(x2, mod.w_int8, mod.w_scale, bias)
    return y.to(x.dtype).reshape(*lead, mod.out_features)


# ---------------------------------------------------------------------- shared prologues
class SharedPrologue:
    """Deploy linears that read the same input: an attention's ``to_q``, ``to_k``, ``to_v``. When the first
    member is called it computes every member's output, on CUDA through ``lsgq::rot_fp8_multi_linear`` (one
    Triton prologue reads ``x`` for all three instead of three prologues reading it three times), and keeps
    them until the others are called; a later member called on another tensor than the first one's (a
    processor that feeds k and v something else) computes alone, so the result never depends on the
    grouping. A plain object, not a module: nothing is saved, ``torch.compile`` traces it as Python."""

    def __init__(self, members: list[DeployLinear], names: str) -> None:
        self.members, self.names = list(members), names
        self.pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        #: True when the members run one multi-output kernel on CUDA (else each its own forward)
        self.fused = all(m._fused_kernel() for m in members) \
            and len({(m.in_features, m.rot_block, m.input_act) for m in members}) == 1

    def take(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Member ``index``'s output of ``x`` (member 0 computes all), or None: compute it alone."""
        if index == 0:
            ys = self.compute(x)
            self.pending = (x, ys)
            return ys[0]
        p = self.pending
        if p is None or p[0] is not x:
            return None
        if index == len(self.members) - 1:
            self.pending = None
        return p[1][index]

    def compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every member's output of ``x (..., K)``."""
        if not (x.is_cuda and self.fused):
            return [m._forward(x) for m in self.members]
        from lsgq_compiler.kernels import deploy_ops as ops

        lead, first = x.shape[:-1], self.members[0]
        x2 = x.reshape(-1, first.in_features).to(torch.bfloat16)
        layers = []
        for m in self.members:
            p = m._fp8_operands()
            layers.append({"weight": p["weight"], "w_scale": m.w_scale, "col": p["col"], "lr_down": p["lr_down"],
                           "lr_up": p["lr_up"], "bias": None if m.bias is None else m.bias.to(torch.bfloat16)})
        ys = ops.rot_fp8_multi_linear(x2, layers, first.rot_block, first.input_act)
        return [y.to(x.dtype).reshape(*lead, m.out_features) for y, m in zip(ys, self.members)]


def share_prologues(model: nn.Module) -> int:
    """Group the ``to_q``, ``to_k``, ``to_v`` deploy linears of each self-attention in ``model`` (modules with
    ``is_cross_attention`` False: diffusers' ``Attention``, ``WanAttention``) into a :class:`SharedPrologue`;
    returns the number of groups. Idempotent; outputs are unchanged (the same kernels per layer).

    Off by default (``prepare(model, share_qkv=True)`` turns it on): on the H200 the three-output prologue
    is bound by its rotations (each output rotates every tile twice, on the tensor cores), not by reading
    ``x``, so one launch for three costs about what three launches cost (0.51 ms against 0.39-0.48 at
    M = 17,776, K = 3072) and CogVideoX1.5-5B did not get faster (2026-12-04, README "Deploying")."""
    n = 0
    for name, mod in model.named_modules():
        if getattr(mod, "is_cross_attention", True) is not False:
            continue
        qkv = [getattr(mod, a, None) for a in ("to_q", "to_k", "to_v")]
        if not all(isinstance(m, DeployLinear) for m in qkv):
            continue
        if qkv[0]._shared is not None and qkv[0]._shared.members == qkv:
            n += 1
            continue
        group = SharedPrologue(qkv, f"{name}.to_q/k/v" if name else "to_q/k/v")
        for i, m in enumerate(qkv):
            m._shared, m._shared_index = group, i
        n += 1
    return n


# ---------------------------------------------------------------------- activation fusion
class DeferredGELU(nn.Module):
    """A diffusers ``GELU`` whose activation moved into the next layer's prologue: returns ``proj(x)``.
    The submodule keeps its name (``proj``), so state-dict keys do not change."""

    def __init__(self, gelu: nn.Module) -> None:
        super().__init__()
        self.proj = gelu.proj
        self.approximate = gelu.approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def fuse_gelu(model: nn.Module, device_type: str | None = "cuda") -> int:
    """Move each feed-forward's tanh-GELU into the prologue of the deploy layer that consumes it.

    A diffusers ``FeedForward`` runs ``net = [GELU(proj), Dropout, ..., out]`` in order; where the
    activation is ``GELU(approximate="tanh")`` and the next layer after dropouts is a
    :class:`DeployLinear` of a per-row FP8 kind, the GELU becomes :class:`DeferredGELU` and the
    layer applies the activation itself (:attr:`DeployLinear.input_act`): on CUDA inside the fused
    prologue (one pass over the wide hidden state fewer), elsewhere as the same ``F.gelu`` call, so
    outputs do not change. ``device_type``: fuse only layers whose tensors live there (None: all).
    Returns how many feed-forwards were fused.

    Measured on the H200 (``bench/deploy_gpu.py --parts linear_parts``, M = 17,776, K = 12,288,
    2026-12-02): the prologue with the GELU fused takes 1.08 ms against 0.73 ms for torch's GELU followed
    by the plain prologue (K = 3072: 0.28 against 0.20 ms); the kernel is bound by its instructions, not
    by memory, and the fused GELU runs in both of its sweeps. So :func:`~lsgq_compiler.deploy.module_form.prepare` leaves it off."""
    from diffusers.models.activations import GELU

    from lsgq_compiler.kernels.fp8_prologue import ACT_GELU_TANH

    n = 0
    for m in model.modules():
        net = getattr(m, "net", None)
        if not isinstance(net, nn.ModuleList):
            continue
        for i, act in enumerate(net):
            if type(act) is not GELU or act.approximate != "tanh":
                continue
            j = i + 1
            while j < len(net) and isinstance(net[j], nn.Dropout) and (net[j].p == 0 or not m.training):
                j += 1
            out = net[j] if j < len(net) else None
            if not isinstance(out, DeployLinear) or out.kind not in ("int4r_fp8", "fp8_row") or out.input_act:
                continue
            if device_type is not None and out.w_scale.device.type != device_type:
                continue
            net[i] = DeferredGELU(act)
            out.input_act = ACT_GELU_TANH
            n += 1
    return n


# ---------------------------------------------------------------------- attention
SDPA = torch.nn.functional.scaled_dot_product_attention


_CLASSES: dict[tuple[type, int], type] = {}


def _int8_sdpa(min_kv: int):
    """``F.scaled_dot_product_attention`` where each call without mask, dropout, causal flag or GQA over
    at least ``min_kv`` keys runs ``lsgq::int8_attention``: the rule and op of the compiler's attention
    pass, so outputs match the compiled model."""
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is None and not dropout_p and not is_causal and not enable_gqa and key.shape[-2] >= min_kv:
            s = scale or float(query.shape[-1]) ** -0.5
            return torch.ops.lsgq.int8_attention(query, key, value, float(s), True)
        return SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)
    return sdpa


def _rebound_call(cls: type, min_kv: int):
    """``cls.__call__`` with its module globals rebound so its attention calls run 8-bit attention:
    ``F`` / ``torch.nn.functional`` get an ``scaled_dot_product_attention`` with the 8-bit rule, and
    diffusers' ``dispatch_attention_fn`` (``(B, N, H, D)`` layout) routes its native path through it.
    A plain function (no mode, no wrapper): ``torch.compile`` traces it without graph breaks."""
    import types

    fn = cls.__call__
    sdpa = _int8_sdpa(min_kv)
    g = dict(fn.__globals__)
    for name, val in list(g.items()):
        if val is torch.nn.functional:
            mod = types.ModuleType(val.__name__)
            mod.__dict__.update(val.__dict__)
            mod.scaled_dot_product_attention = sdpa
            g[name] = mod
    if "dispatch_attention_fn" in g:
        orig = g["dispatch_attention_fn"]

        def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                  enable_gqa=False, backend=None, parallel_config=None, **kw):
            if backend is None and parallel_config is None and not kw:
                out = sdpa(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask,
                           dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
                return out.transpose(1, 2)
            return orig(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa, backend=backend, parallel_config=parallel_config, **kw)

        g["dispatch_attention_fn"] = dispatch_attention_fn
    import sys

    # the globals are a real module's (dynamo guards globals through their module's name)
    name = f"lsgq_compiler.deploy._int8_globals.{cls.__module__.replace('.', '_')}.{cls.__name__}_{min_kv}"
    gmod = types.ModuleType(name)
    gmod.__dict__.update(g)
    gmod.__name__ = name
    sys.modules[name] = gmod
    new = types.FunctionType(fn.__code__, gmod.__dict__, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def int8_processor(inner: Any, min_kv: int = 256) -> Any:
    """The 8-bit attention processor for ``inner`` (Wan's, CogVideoX's, ...): a subclass of ``inner``'s class whose
    ``__call__`` is the same code with 8-bit attention (same signature: diffusers filters kwargs by it)."""
    cls = type(inner)
    key = (cls, int(min_kv))
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Int8{cls.__name__}", (cls,), {"__call__": _rebound_call(cls, int(min_kv)),
                                                             "min_kv": int(min_kv), "lsgq_int8": True})
    out = _CLASSES[key].__new__(_CLASSES[key])
    out.__dict__.update(getattr(inner, "__dict__", {}))
    import lsgq_compiler.kernels.attention  # noqa: F401  (registers torch.ops.lsgq.int8_attention)
    return out
