"""Public API: :func:`compile_quantized` and the :class:`QuantizedModel` it returns."""
from __future__ import annotations

import time
import warnings
import weakref
from typing import Any, Iterable

import torch
from torch import fx, nn

from . import distributed
from .calibration import check_model, check_tensors, prepare_calibration
from .capture import Inputs, capture, normalize_inputs, tensor_leaves
from .config import QuantConfig
from .errors import user_error
from .plan import Plan
from .qlinear import QuantLinear, quant_linears
from .recipes import RECIPES
from .train import LAYER_TRAINING_PASSES


class QuantizedModel(nn.Module):
    """A compiled, quantized copy of the user's model.

    Call it like the original (same positional/keyword inputs, same shapes as captured);
    it returns the output tensor. ``plan`` holds the per-layer decisions.
    """

    def __init__(self, gm: fx.GraphModule, plan: Plan, config: QuantConfig, info: dict[str, Any]) -> None:
        super().__init__()
        self.gm = gm
        self.plan = plan
        self.config = config
        self.info = info

    def train(self, mode: bool = True) -> "QuantizedModel":
        # exported GraphModules refuse train()/eval(); the graph is captured in eval
        # semantics, so only the flag that our quantizers read is switched.
        for m in self.modules():
            m.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("return_dict", None)
        try:
            out = self.gm(*args, **kwargs)
        except AssertionError as e:  # torch.export's shape guards: "Guard failed: x.size()[3] == 8"
            captured = self.info.get("input_shapes", {})
            given = {k: tuple(t.shape) for k, t in tensor_leaves(tuple(args), dict(kwargs))}
            if "guard" not in str(e).lower() and given == captured:
                raise
            raise user_error(f"this QuantizedModel was captured at input shapes {captured} and was called at "
                             f"{given}; a compiled model runs only at the shapes it was captured at",
                             "re-apply the plan at the new shape: compile_quantized(model, new_inputs, "
                             "qm.config, plan=qm.plan, quant_state=qm.quant_state_dict())") from None
        structure = getattr(self, "output_structure", None)  # several outputs: the model's own structure
        return structure.restore(out) if structure is not None else out

    def quant_linears(self) -> dict[str, QuantLinear]:
        return quant_linears(self.gm)

    def quant_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors of every QuantLinear (trained weights, low-rank, scales), keyed ``path/name``."""
        out = {}
        for path, m in self.quant_linears().items():
            for k, v in m.state_dict().items():
                if v is not None:
                    out[f"{path}/{k}"] = v.detach()
        return out

    def report(self) -> list[dict[str, Any]]:
        """One row per layer: ``layer``, ``format`` (the plan's, e.g. ``W4A4``), ``act``, ``rank``,
        ``rotate``, and how it runs: ``kernel`` (the op doing the GEMM), ``backend`` and
        ``real_kernel`` (True when that op computes on integer/low-precision data, False when the
        quantization is simulated in floating point). Here every quantized linear is simulated
        (fake-quant); a lowered model (``lsgq_compiler.backends``) sets each module's
        ``kernel_info`` (``backend``, ``kernel``, ``real_kernel``, ``note``), reported as is."""
        rows = []
        for path, m in self.quant_linears().items():
            s = m.spec
            rows.append({"layer": path, "format": s.fmt, "act": s.act_quantizer if s.act_bits else "-",
                         "rank": s.rank, "rotate": s.rotate, "kernel": "fp32" if not s.quantized else "simulated",
                         "backend": "fake-quant", "real_kernel": not s.quantized,
                         **({"note": s.extra["fallback"]} if "fallback" in s.extra else {}),
                         **({"capture": s.extra["capture"]} if "capture" in s.extra else {}),
                         **getattr(m, "kernel_info", {})})
        for path, why in self.info.get("notes", {}).get("skipped_linears", {}).items():
            rows.append({"layer": path, "format": "FP", "act": "-", "rank": 0, "rotate": False, "kernel": "fp32",
                         "backend": "torch", "real_kernel": True, "note": why})
        for path, a in self.plan.attention.items():
            rows.append({"layer": path, "format": a["format"], "act": "-", "rank": 0, "rotate": False,
                         "kernel": a.get("kernel", "triton int8 (CUDA) / simulated (CPU)" if a["quantized"] else "sdpa"),
                         "backend": a.get("backend", "torch"), "real_kernel": a.get("real_kernel", not a["quantized"]),
                         **{k: a[k] for k in ("note", "sqnr_db", "reason") if k in a}})
        return rows


def compile_quantized(
    model: nn.Module,
    example_inputs: Inputs,
    config: QuantConfig | None = None,
    calib_data: Iterable[Any] | None = None,
    plan: Plan | None = None,
    quant_state: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> QuantizedModel:
    """Capture ``model`` at ``example_inputs``, run the recipe's passes, return a quantized copy.

    Called on every rank of an initialised ``torch.distributed`` process group (``torchrun``), with
    the same arguments: calibration clips and QAO layers are split across the ranks and merged
    exactly, so each rank returns what one process returns (:mod:`lsgq_compiler.distributed`).

    Args:
        model: an ``nn.Module`` (e.g. a diffusers transformer). Never modified.
        example_inputs: tuple (positional), dict (keyword) or tensor; fixes the shapes.
        config: what to do; default ``QuantConfig()`` (minmax W8A8).
        calib_data: iterable of input batches shaped like ``example_inputs``. If omitted,
            the example inputs are used and a warning says calibration is weak.
        plan: a saved :class:`Plan` to re-apply (skips sensitivity and bit allocation).
        quant_state: tensors from ``qm.quant_state_dict()`` to restore trained parameters.
        progress: show progress bars.

    Example:
        >>> qm = compile_quantized(model, inputs, QuantConfig(recipe="minmax", weight_bits=8, act_bits=8))
        >>> out = qm(**inputs)
    """
    from lsgq_compiler.passes.infra import PassContext, run_passes, specs

    if config is None:
        config = QuantConfig()
    if not isinstance(config, QuantConfig):
        raise user_error(f"config must be a QuantConfig, got {type(config).__name__}",
                         "e.g. config=QuantConfig(recipe='minmax', weight_bits=8, act_bits=8)", TypeError)
    if plan is not None and not isinstance(plan, Plan):
        raise user_error(f"plan must be a Plan, got {type(plan).__name__}", "load one with Plan.load(path)", TypeError)
    if plan is not None:
        plan = Plan.from_dict(plan.to_dict())  # passes write into specs: never into the caller's plan
    if isinstance(model, nn.Module):
        check_model(model)
    ex_args, ex_kwargs = normalize_inputs(example_inputs)
    check_tensors(ex_args, ex_kwargs, "example_inputs")  # NaN/Inf here would poison calibration too
    t0 = time.perf_counter()
    captured = capture(model, example_inputs, copy_model=True, form=config.capture)
    capture_s = time.perf_counter() - t0
    calib = prepare_calibration(calib_data, captured)
    ranks = None
    if distributed.active():  # calibration and QAO split across the ranks (lsgq_compiler.distributed)
        ranks = distributed.check_job(config.to_dict(), calib, plan.to_json() if plan is not None else None)
        progress = progress and distributed.is_main()
    ctx = PassContext(config=config, captured=captured, calib=calib, plan=plan, progress=progress)
    skipped = _tied_linears(captured.gm)
    if skipped:
        ctx.notes["skipped_linears"] = skipped
        warnings.warn(f"{len(skipped)} linear layer(s) share (tie) their weight with another layer and stay in full "
                      f"precision: " + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]), TiedWeightWarning,
                      stacklevel=2)
    ctx.timings["capture"] = capture_s
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.target != "sim":  # deploy target: formats and grids of its kernels (passes/target.py)
            from lsgq_compiler.passes.target import insert_target_passes, target_config

            ctx.config = target_config(config)
        passes = RECIPES[config.recipe].build(ctx)
        if config.target != "sim":
            passes = insert_target_passes(passes, ctx)
        if config.attention_bits:
            from lsgq_compiler.passes.attention import QuantizeAttention

            keep = tuple(k for k, v in (plan.attention.items() if plan else ()) if not v.get("quantized", True))
            passes.append(QuantizeAttention(ctx, min_kv_tokens=int(config.options.get("attention_min_kv", 256)),
                                            keep=keep, measure=not (plan and plan.attention),
                                            min_sqnr_db=float(config.options.get("attention_min_sqnr_db", 25.0)),
                                            calib_batches=int(config.options.get("attention_calib_batches", 2))))
        for i, p in enumerate(passes):  # the last layer-training pass frees each layer's target when done
            if hasattr(p, "release_targets"):
                p.release_targets = not any(type(q).__name__ in LAYER_TRAINING_PASSES for q in passes[i + 1:])
        peak: dict[str, float] = {}
        gm = run_passes(captured.gm, passes, ctx.timings, peak)
    for m in gm.modules():  # training targets (a weight copy per trained layer) are done with;
        if isinstance(m, QuantLinear):  # the fake-quant weight cache is rebuilt on use
            m.fp_weight = m._wcache = None
    if quant_state is not None:
        _load_quant_state(gm, quant_state)
    layers = specs(gm)
    result_plan = Plan(layers=layers, model_class=captured.model_class, config=config.to_dict(),
                       attention=dict(ctx.notes.get("attention", {})))
    info = {"compile_s": time.perf_counter() - t0, "timings": dict(ctx.timings), "peak_mem_gib": peak,
            "input_shapes": captured.input_shapes, "notes": ctx.notes, **({"distributed": ranks} if ranks else {})}
    from lsgq_compiler.module_form import record_capture

    record_capture(gm, captured, result_plan, info)
    qm = QuantizedModel(gm, result_plan, config, info)
    qm._source_model = weakref.ref(model)  # for lsgq_compiler.save_pretrained / deploy.to_module_form
    qm.output_structure = None if captured.output_structure.single else captured.output_structure
    qm.eval()
    return qm


class TiedWeightWarning(UserWarning):
    """Linear layers sharing a weight tensor: the tensor is quantized once, the other users stay full precision."""


def _tied_linears(gm: nn.Module) -> dict[str, str]:
    """Linear calls of an ``nn.Linear`` whose weight is another module's (tied): ``{path: reason}``.

    torch.export keeps one copy of a shared tensor, under one owner's name; the other linears
    calling it are left out of the plan (quantizing them would need their own copy), so say so.
    """
    from .capture import PATH_KEY, _PREFIX

    if not isinstance(gm, fx.GraphModule):
        return {}
    out = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != torch.ops.aten.linear.default or PATH_KEY in n.meta:
            continue
        stack = n.meta.get("nn_module_stack") or {}
        w = n.args[1] if len(n.args) > 1 else None
        if not stack or not isinstance(w, fx.Node) or w.op != "get_attr" or not str(w.target).endswith(".weight"):
            continue
        path, mtype = list(stack.values())[-1]
        if not (isinstance(mtype, type) and issubclass(mtype, nn.Linear) or "Linear" in str(mtype)):
            continue
        owner = str(w.target)[: -len(".weight")]
        strip = (lambda p: p[len(_PREFIX):] if p.startswith(_PREFIX) else p)  # noqa: E731
        out[strip(path)] = (f"weight tied to {strip(owner)}: the shared tensor is quantized at most once, as "
                            f"{strip(owner)}; this layer is left out of the plan and keeps the full-precision "
                            "weight (untie it, e.g. clone the weight, to quantize it too)")
    return out


def _load_quant_state(gm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    mods = quant_linears(gm)
    for key, t in state.items():
        path, _, name = key.rpartition("/")
        if path not in mods:
            raise user_error(f"quant_state has tensors for {path}, which this model does not have",
                             "restore state only into a compile of the same model and plan")
        m = mods[path]
        cur = dict(m.named_parameters()) | dict(m.named_buffers())
        if name in cur and cur[name] is not None:
            if cur[name].shape != t.shape:
                raise user_error(f"quant_state {key} has shape {tuple(t.shape)}, expected {tuple(cur[name].shape)}",
                                 "the state belongs to a different plan or model")
            with torch.no_grad():
                cur[name].copy_(t)
        else:
            raise user_error(f"quant_state {key} does not match a tensor of {path}",
                             "restore state only into a compile with the same plan")
        m._wcache = None
