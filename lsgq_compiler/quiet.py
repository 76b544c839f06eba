"""Quiet command line: third-party import-time noise off unless asked for.

``lsgq`` calls :func:`quiet` first thing in ``main()``, before torchao, diffusers or onnx are
imported, so a user sees only the project's own progress bars, tables, warnings and errors.
``lsgq --verbose`` or ``LSGQ_VERBOSE=1`` leaves every warning and log record as it is.

What it silences (all known to be harmless here): torch's ``_pytree`` "register_constant()
on Enum subclasses is deprecated" records (logged when torchao registers its enums), torchao's
"Failed to load .../_C_*.so" (CUDA kernel libraries on a CPU machine), "Unable to import
`torchao` Tensor objects", "Detected no triton"; and warnings raised from inside torch,
torchao, diffusers, onnx and onnxscript. Warnings the project emits (``lsgq_compiler``) and
errors stay.
"""
from __future__ import annotations

import logging
import os
import warnings

#: loggers of third-party packages, raised to ERROR
LOGGERS: tuple[str, ...] = ("torchao", "torch", "torch.utils._pytree", "torch._dynamo", "torch._inductor",
                            "torch.export", "torch.onnx", "torch._export", "diffusers", "onnxscript", "onnx",
                            "onnx_ir", "accelerate", "huggingface_hub")
#: warning messages (regex, start of message) silenced wherever they come from
MESSAGES: tuple[str, ...] = (r".*register_constant", r".*Unable to import `torchao`", r".*Failed to load .*torchao",
                             r".*Detected no triton")
#: modules whose own warnings are silenced
MODULES = r"(torch|torchao|diffusers|onnx|onnxscript|onnx_ir|onnxruntime|accelerate|huggingface_hub)(\..*)?$"


def verbose_requested(flag: bool = False) -> bool:
    """``--verbose`` given, or ``LSGQ_VERBOSE`` set to anything but ``""``/``0``."""
    return flag or os.environ.get("LSGQ_VERBOSE", "") not in ("", "0")


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(k in msg for k in ("register_constant", "Unable to import `torchao`", "Failed to load",
                                          "Detected no triton"))


def quiet(verbose: bool = False) -> bool:
    """Silence third-party noise for this process unless :func:`verbose_requested`.

    Returns:
        True when the filters were installed, False in verbose mode (nothing changed).
    """
    if verbose_requested(verbose):
        return False
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for pattern in MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", module=MODULES)
    drop = _DropMessages()
    for name in LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(logging.ERROR)
        log.addFilter(drop)
    logging.getLogger().addFilter(drop)
    return True
