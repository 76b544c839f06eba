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
        for k, t in leaves:
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise user_error(f"calib_data[{i}] input {k!r} contains NaN or Inf",
                                 "clean the calibration data (check decoding and normalisation)")
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
