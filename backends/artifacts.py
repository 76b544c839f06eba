"""``save_quantized`` / ``load_quantized``: the older names of the deploy checkpoint.

There is one on-disk format, the deploy checkpoint of :mod:`lsgq_compiler.deploy.checkpoint`
(a diffusers component folder: ``config.json`` with a ``quantization_config``, safetensors of
plain tensors). These two functions write and read it through
:func:`~lsgq_compiler.deploy.checkpoint.save_pretrained` and
:func:`~lsgq_compiler.deploy.checkpoint.from_pretrained`: loading needs no base model, no example
inputs and no calibration, and the loaded model (the model's own class) runs at any shape.

The artifact format of earlier versions (``lsgq.json`` + ``weights.safetensors``, re-captured
with ``torch.export`` on load) is no longer written nor read: loading one says so, and saving
over one replaces it with a checkpoint (files you added to the folder are kept).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsgq_compiler.deploy.checkpoint import from_pretrained, save_pretrained


def save_quantized(qm: Any, directory: str | os.PathLike, model: nn.Module | None = None,
                   lowrank_dtype: torch.dtype | None = None) -> Path:
    """Write the deploy checkpoint of ``qm`` to ``directory``: :func:`save_pretrained` under its older name.

    Args:
        qm: a :class:`~lsgq_compiler.QuantizedModel` of a diffusers model (or its module form).
        directory: the checkpoint folder (replaced atomically if it holds an earlier checkpoint).
        model: the eager model ``qm`` was compiled from (default: the one given to
            ``compile_quantized``, if still alive); it supplies the model class, config and the
            tensors the plan leaves in full precision.
        lowrank_dtype: kept for compatibility; no effect. Low-rank factors are stored as the layer
            runs them: at the compiled precision for simulated (``sim``) layers, so the round trip is
            exact, and in bf16 for a kernel target's layers (whose plan already rounded them to bf16).

    Returns:
        The folder written.
    """
    del lowrank_dtype
    return save_pretrained(qm, directory, model=model)


def load_quantized(directory: str | os.PathLike, model: nn.Module | None = None, example_inputs: Any = None, *,
                   device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None,
                   allow_reference: bool = False, check_model: bool = True, progress: bool = False) -> nn.Module:
    """Load a checkpoint written by :func:`save_quantized` / :func:`save_pretrained`: :func:`from_pretrained`
    under its older name.

    Args:
        directory: the checkpoint folder.
        model: optional; only its class is used: the checkpoint must hold that class (else
            refused), and the model is built as that class (useful for a ``ModelMixin`` that is
            not in ``diffusers``). Its weights are not read: the checkpoint holds every tensor.
        example_inputs: kept for compatibility; not used (the loaded model runs at any shape).
        device, torch_dtype, allow_reference: as for :func:`from_pretrained`.
        check_model, progress: kept for compatibility; no effect (there is no base model to
            check against, and nothing is compiled on load).

    Returns:
        An instance of the model's own class in eval mode (call it as the original model, e.g.
        ``m(**inputs, return_dict=False)[0]``; not a ``QuantizedModel``).
    """
    del example_inputs, check_model, progress
    return from_pretrained(directory, device=device, torch_dtype=torch_dtype,
                           model_class=None if model is None else type(model), allow_reference=allow_reference)
