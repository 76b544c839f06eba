"""Shared lowering plumbing: a :class:`LoweredLinear` per layer, swapped into a copy of the model.

A backend supplies ``make_core(layer) -> (core, kernel_info)`` where ``core`` computes the
quantized path of one layer, ``x_R: (..., K) -> Qa(x_R) Qw(W_R)^T + b: (..., N)``, with the
backend's kernel. Everything around that path stays as the fake-quant model has it:
smoothing as a division, the Hadamard rotation as the fast transform, the low-rank branch
in full precision. A layer for which ``make_core`` returns ``core=None`` keeps its
fake-quant :class:`~lsgq_compiler.qlinear.QuantLinear` (simulated) and carries
``kernel_info`` so that ``report()`` says so.

``kernel_info`` keys (read by :meth:`QuantizedModel.report`): ``backend`` (``torchao``,
``onnxruntime``, ``fake-quant``...), ``kernel`` (the op that does the GEMM),
``real_kernel`` (True when that op computes on integer/low-precision data; False when the
quantization is simulated in floating point) and ``note`` (deviations from the plan).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lsgq_compiler.api import QuantizedModel
from lsgq_compiler.errors import user_error
from lsgq_compiler.hadamard import rotate
from lsgq_compiler.qlinear import QuantLinear, quant_linears

CoreFactory = Callable[[QuantLinear], "tuple[nn.Module | None, dict[str, Any]]"]


class LoweredLinear(QuantLinear):
    """A QuantLinear whose quantized path runs ``core`` (a real kernel) instead of fake quantizers.

    Keeps ``spec``, smoothing, rotation and the low-rank branch of the source layer; drops the
    full-precision residual weight (``weight`` is None: ``core`` holds its quantized form) and
    the bias (``core`` adds it). Being a QuantLinear, it stays visible to ``quant_linears()``
    and ``report()``.
    """

    def __init__(self, src: QuantLinear, core: nn.Module, kernel_info: dict[str, Any]) -> None:
        super().__init__(torch.empty(src.out_features, src.in_features), None, src.spec)
        self.weight = None
        self.core = core
        self.kernel_info = dict(kernel_info)
        self.smooth = None if src.smooth is None else src.smooth.detach().clone()
        self.rot_signs = None if src.rot_signs is None else src.rot_signs.detach().clone()
        self.rot_block = src.rot_block
        if src.lr_down is not None:
            self.lr_down = nn.Parameter(src.lr_down.detach().clone(), requires_grad=False)
            self.lr_up = nn.Parameter(src.lr_up.detach().clone(), requires_grad=False)

    def effective_weight(self) -> torch.Tensor:
        raise RuntimeError(f"{self.spec.module_path} is lowered to {self.kernel_info.get('kernel')}; "
                           "its full-precision weight is not kept (use the QuantizedModel before lowering)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., K)`` -> ``(..., N)``."""
        if self.smooth is not None:
            x = x / self.smooth
        y_lr = F.linear(F.linear(x, self.lr_down), self.lr_up) if self.lr_down is not None else None
        if self.rot_block:
            x = rotate(x, self.rot_signs, self.rot_block)
        y = self.core(x)
        return y if y_lr is None else y + y_lr

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={self.kernel_info.get('kernel')}"


def lower_layers(qm: QuantizedModel, make_core: CoreFactory, what: str) -> QuantizedModel:
    """A new QuantizedModel in which every QuantLinear is replaced per ``make_core``.

    ``qm`` is not modified. ``what`` names the lowering in ``info["lowered"]``.
    """
    if not isinstance(qm, QuantizedModel):
        raise user_error(f"expected a QuantizedModel, got {type(qm).__name__}",
                         "lower the result of lsgq_compiler.compile_quantized(...)", TypeError)
    if any(isinstance(m, LoweredLinear) for m in qm.gm.modules()):
        raise user_error("this model is already lowered", "lower the QuantizedModel returned by compile_quantized")
    gm = copy.deepcopy(qm.gm)
    targets = {id(m): name for name, m in gm.named_modules() if isinstance(m, QuantLinear)}
    for path, layer in quant_linears(gm).items():
        layer.stats = None
        layer.calib_stats = None  # calibration records are not part of a deployed model
        why = _nonstandard(layer)
        if why:  # a recipe's extra structure (H-SVD blocks, learnable bias/bounds, LET...): keep it exact
            layer.kernel_info = simulated_info(what, f"not lowered: {why}; kept as the fake-quant layer")
            continue
        core, info = make_core(layer)
        if core is None:
            layer.kernel_info = dict(info)
            continue
        gm.set_submodule(targets[id(layer)], LoweredLinear(layer, core, info))
    info = dict(qm.info)
    info["lowered"] = what
    out = QuantizedModel(gm, copy.deepcopy(qm.plan), qm.config, info)
    out.eval()
    return out


def _nonstandard(layer: QuantLinear) -> str | None:
    """Why ``layer`` carries more than the standard QuantLinear pieces (None if it does not)."""
    from lsgq_compiler.quantizers import ActQuant, WeightQuant

    if type(layer) is not QuantLinear:
        return f"{type(layer).__name__} is a QuantLinear subclass"
    if layer.wq is not None and type(layer.wq) is not WeightQuant:
        return f"learnable weight quantizer {type(layer.wq).__name__}"
    if layer.aq is not None and type(layer.aq) is not ActQuant:
        return f"custom activation quantizer {type(layer.aq).__name__}"
    return None


def simulated_info(backend: str, why: str) -> dict[str, Any]:
    return {"backend": backend, "kernel": "fake-quant (float32 simulation)", "real_kernel": False, "note": why}


def full_precision_info(backend: str, kernel: str) -> dict[str, Any]:
    return {"backend": backend, "kernel": kernel, "real_kernel": True, "note": "full precision"}
