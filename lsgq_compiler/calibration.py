"""Calibration data: validation and running a graph over it."""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import fx
from tqdm.auto import tqdm

from .capture import Captured, normalize_inputs, tensor_leaves
from .errors import user_error


class WeakCalibrationWarning(UserWarning):
    """Calibration fell back to the example inputs."""


class CalibrationCastWarning(UserWarning):
    """Calibration tensors were cast to the dtype of the example inputs."""


def check_model(model: torch.nn.Module) -> None:
    """Refuse a model whose parameters or buffers are on the meta device (no data to quantize)."""
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise user_error(f"the model's tensors are on the meta device (e.g. {meta[0]!r}, {len(meta)} in all): "
                         "they hold no values to calibrate or quantize",
                         "load the real weights first (e.g. from_pretrained without device_map='meta', "
                         "or model.to_empty(device='cpu') then load_state_dict)")


def check_tensors(args: tuple, kwargs: dict, what: str) -> None:
    """Refuse meta-device tensors and floating tensors holding NaN or Inf in ``what``'s inputs."""
    for k, t in tensor_leaves(args, kwargs):
        if t.is_meta:
            raise user_error(f"{what} input {k!r} is on the meta device (it holds no values)",
                             "pass real tensors (on cpu or cuda)")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise user_error(f"{what} input {k!r} contains NaN or Inf",
                             "clean the inputs (check decoding and normalisation)")


def _cast_like(v: Any, ref: Any) -> tuple[Any, list[str]]:
    """Cast floating tensors in ``v`` to the dtype of the matching tensor in ``ref`` (same structure)."""
    if isinstance(v, torch.Tensor) and isinstance(ref, torch.Tensor):
        if v.is_floating_point() and ref.is_floating_point() and v.dtype != ref.dtype:
            return v.to(ref.dtype), [f"{v.dtype} -> {ref.dtype}"]
        return v, []
    if isinstance(v, (list, tuple)) and isinstance(ref, (list, tuple)) and len(v) == len(ref):
        pairs = [_cast_like(a, b) for a, b in zip(v, ref)]
        return type(v)(p[0] for p in pairs), [n for p in pairs for n in p[1]]
    if isinstance(v, dict) and isinstance(ref, dict):
        pairs = {k: _cast_like(x, ref.get(k)) for k, x in v.items()}
        return {k: p[0] for k, p in pairs.items()}, [n for p in pairs.values() for n in p[1]]
    return v, []


def prepare_calibration(calib_data: Iterable[Any] | None, captured: Captured) -> list[tuple[tuple, dict]]:
    """Validate calibration batches against the captured input shapes.

    Each batch is a tuple of positional inputs or a dict of keyword inputs, with the same
    tensor names and shapes as the example inputs (capture is at static shapes).
    """
    if calib_data is None:
        warnings.warn("no calib_data given: calibrating on the example inputs only, which is weak; "
                      "pass calib_data=[inputs, ...] from a few representative clips", WeakCalibrationWarning,
                      stacklevel=3)
        return [(captured.args, captured.kwargs)]
    if isinstance(calib_data, (torch.Tensor, dict)) or not hasattr(calib_data, "__iter__"):
        raise user_error(f"calib_data must be an iterable of input batches, got {type(calib_data).__name__}",
                         "pass a list of tuples (or dicts) shaped like example_inputs", TypeError)
    batches: list[tuple[tuple, dict]] = []
    for i, b in enumerate(calib_data):
        args, kwargs = normalize_inputs(b, f"calib_data[{i}]")
        leaves = tensor_leaves(args, kwargs)
        shapes = {k: tuple(t.shape) for k, t in leaves}
        if shapes != captured.input_shapes:
            raise user_error(f"calib_data[{i}] has inputs {shapes} but the model was captured at "
                             f"{captured.input_shapes}",
                             "calibration batches must have the example inputs' names and shapes "
                             "(capture is at static shapes); crop or resize the clips")
        check_tensors(args, kwargs, f"calib_data[{i}]")
        (args, kwargs), cast = _cast_like((args, kwargs), (captured.args, captured.kwargs))
        if cast:  # e.g. fp16 clips for an fp32 model: calibrate in the dtype the model was captured in
            warnings.warn(f"calib_data[{i}]: cast {sorted(set(cast))} to the example inputs' dtype",
                          CalibrationCastWarning, stacklevel=3)
        batches.append((args, kwargs))
    if not batches:
        raise user_error("calib_data is empty", "pass at least one input batch, or omit calib_data to use "
                         "the example inputs (weak)")
    return batches


@torch.no_grad()
def run_batches(gm: fx.GraphModule | torch.nn.Module, batches: list[tuple[tuple, dict]],
                desc: str = "calibrating", progress: bool = True) -> list[torch.Tensor]:
    """Run ``gm`` on every batch; returns the outputs (detached)."""
    outs = []
    for args, kwargs in tqdm(batches, desc=desc, disable=not progress or len(batches) < 2, leave=False):
        outs.append(gm(*args, **kwargs).detach())
    return outs
