"""Deploy: targets, the module form and the standalone checkpoint (``save_pretrained`` /
``from_pretrained``). Heavy imports (diffusers, accelerate, safetensors) happen on use."""
from __future__ import annotations

from typing import Any

__all__ = ["save_pretrained", "from_pretrained", "to_module_form", "compile_repeated_blocks", "cuda_graphs",
           "share_prologues", "TARGETS"]

from .graphs import cuda_graphs
from .regional import compile_repeated_blocks
from .targets import TARGETS


def save_pretrained(obj: Any, directory: Any, *args: Any, **kwargs: Any):
    """See :func:`lsgq_compiler.deploy.checkpoint.save_pretrained`."""
    from .checkpoint import save_pretrained as save
    return save(obj, directory, *args, **kwargs)


def from_pretrained(directory: Any, *args: Any, **kwargs: Any):
    """See :func:`lsgq_compiler.deploy.checkpoint.from_pretrained`."""
    from .checkpoint import from_pretrained as load
    return load(directory, *args, **kwargs)


def to_module_form(qm: Any, model: Any = None):
    """See :func:`lsgq_compiler.deploy.module_form.to_module_form`."""
    from .module_form import to_module_form as build
    return build(qm, model)


def share_prologues(model: Any) -> int:
    """See :func:`lsgq_compiler.deploy.modules.share_prologues` (opt-in: measured no faster on the H200)."""
    from .modules import share_prologues as share
    return share(model)
