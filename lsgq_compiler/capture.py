"""Capture: a diffusers transformer + example inputs -> an FX ``GraphModule`` via ``torch.export``.

Non-strict export at static shapes of a wrapper that calls the model with
``return_dict=False`` and returns the first output as a plain tensor. Every
``aten.linear`` node whose weight belongs to an ``nn.Linear`` is tagged with that
module's path (FQN in the user's model) in ``node.meta["lsgq_path"]``.
"""
from __future__ import annotations

import copy
import inspect
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .errors import CaptureError, user_error

PATH_KEY = "lsgq_path"
_PREFIX = "model."
Inputs = Any  # tuple of positional args, dict of kwargs, or a single tensor


def normalize_inputs(inputs: Inputs, what: str = "example_inputs") -> tuple[tuple, dict]:
    """``tuple | list | dict | Tensor`` -> ``(args, kwargs)``."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        if len(inputs) == 2 and isinstance(inputs[0], (tuple, list)) and isinstance(inputs[1], dict):
            return tuple(inputs[0]), dict(inputs[1])
        return tuple(inputs), {}
    raise user_error(f"{what} must be a tuple of positional inputs, a dict of keyword inputs or a tensor, "
                     f"got {type(inputs).__name__}",
                     "e.g. compile_quantized(model, (x,)) or compile_quantized(model, {'hidden_states': x, ...})",
                     TypeError)


def tensor_leaves(args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """Named tensors in (args, kwargs), in a stable order (for shape/NaN checks)."""
    out: list[tuple[str, torch.Tensor]] = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            out.append((f"arg{i}", a))
    for k in sorted(kwargs):
        if isinstance(kwargs[k], torch.Tensor):
            out.append((k, kwargs[k]))
    return out


class ReturnTensor(nn.Module):
    """Calls ``model(..., return_dict=False)`` when it accepts that, returns output[0] as a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        try:
            params = inspect.signature(model.forward).parameters
            self._return_dict = "return_dict" in params
        except (TypeError, ValueError):
            self._return_dict = False

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(*args, **kwargs, return_dict=False) if self._return_dict else self.model(*args, **kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if hasattr(out, "sample"):
            out = out.sample
        return out


@dataclass
class Captured:
    """A captured model: the graph, the inputs it was captured at, and provenance."""

    gm: fx.GraphModule
    model_class: str
    args: tuple
    kwargs: dict
    reference_output: torch.Tensor
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def linear_nodes(self) -> list[fx.Node]:
        return linear_nodes(self.gm)


def linear_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """``aten.linear`` call nodes tagged with a module path, in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and n.target == torch.ops.aten.linear.default and PATH_KEY in n.meta]


def _explain_export_failure(model: nn.Module, err: BaseException) -> CaptureError:
    name = type(model).__name__
    msg = str(err).strip().splitlines()
    head = msg[0][:300] if msg else type(err).__name__
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "site-packages/torch" not in f.filename and "lsgq_compiler" not in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames else "inside torch.export"
    text = str(err)
    if re.search(r"data.dependent|GuardOnDataDependent|Could not guard on data-dependent", text):
        construct, todo = ("data-dependent control flow (a Python branch or size that depends on tensor values)",
                           "make the branch static (fixed timestep/shape), or move it out of forward()")
    elif "Unsupported" in text or "not supported" in text:
        construct, todo = ("an operation torch.export does not support", "replace it with a traceable equivalent")
    elif "mismatch" in text.lower() or "shape" in text.lower():
        construct, todo = ("a shape mismatch while tracing", "check example_inputs match what the model expects")
    else:
        construct, todo = (type(err).__name__, "check the model runs eagerly on example_inputs; "
                           "capture uses torch.export(strict=False) at static shapes")
    return CaptureError(f"could not capture {name}: {construct}\n  at {where}\n  torch said: {head}\n  -> {todo}")


def capture(model: nn.Module, example_inputs: Inputs, copy_model: bool = True) -> Captured:
    """Export ``model`` at the shapes of ``example_inputs`` to a ``GraphModule``.

    Args:
        model: any ``nn.Module``; diffusers transformers are called with ``return_dict=False``.
        example_inputs: tuple (positional), dict (keyword) or tensor.
        copy_model: deep-copy first so the user's module and parameters are never touched.

    Raises:
        TypeError / ValueError: inputs of the wrong kind or not matching the model.
        CaptureError: torch.export failed; the message names the construct and what to try.
    """
    if not isinstance(model, nn.Module):
        raise user_error(f"model must be a torch.nn.Module, got {type(model).__name__}",
                         "pass the transformer module itself (e.g. pipe.transformer)", TypeError)
    args, kwargs = normalize_inputs(example_inputs)
    if not tensor_leaves(args, kwargs):
        raise user_error("example_inputs contain no tensor", "pass the tensors the model's forward takes", TypeError)
    src = copy.deepcopy(model) if copy_model else model
    src.eval()
    wrapper = ReturnTensor(src)
    try:
        with torch.no_grad():
            ref = wrapper(*args, **kwargs)
    except Exception as e:  # the model itself rejects the inputs
        shapes = {k: tuple(t.shape) for k, t in tensor_leaves(args, kwargs)}
        raise user_error(f"example inputs do not match {type(model).__name__}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:200]} (inputs: {shapes})",
                         "pass the inputs the model's forward expects (names, shapes, dtypes); "
                         "check that model(*args, **kwargs) runs eagerly") from None
    if not isinstance(ref, torch.Tensor):
        raise user_error(f"{type(model).__name__} returned {type(ref).__name__}, not a tensor",
                         "wrap the model so forward returns the output tensor", TypeError)
    try:
        ep = torch.export.export(wrapper, args, kwargs, strict=False)
    except Exception as e:
        raise _explain_export_failure(model, e) from e
    gm = ep.module()
    _tag_linears(gm)
    return Captured(gm=gm, model_class=type(model).__name__, args=args, kwargs=kwargs,
                    reference_output=ref.detach(),
                    input_shapes={k: tuple(t.shape) for k, t in tensor_leaves(args, kwargs)})


def _tag_linears(gm: fx.GraphModule) -> None:
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != torch.ops.aten.linear.default:
            continue
        stack = n.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path, mtype = list(stack.values())[-1]
        w = n.args[1]
        is_linear = isinstance(mtype, type) and issubclass(mtype, nn.Linear) or "Linear" in str(mtype)
        if not is_linear or not isinstance(w, fx.Node) or w.op != "get_attr" or w.target != f"{path}.weight":
            continue  # functional linear or computed weight: left in full precision
        n.meta[PATH_KEY] = path[len(_PREFIX):] if path.startswith(_PREFIX) else path
        n.meta["lsgq_target"] = path
