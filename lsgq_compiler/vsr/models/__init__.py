"""Models shipped with lsgq-compiler: the tiny one-step VSR transformer (see :mod:`.tiny_vsr`)."""
from .tiny_vsr import (DEFAULT_WEIGHTS, TinyVSR, build_tiny_vsr, load_tiny_vsr, save_tiny_vsr, tiny_vsr_config,
                       upscale_clip)

__all__ = ["TinyVSR", "load_tiny_vsr", "build_tiny_vsr", "save_tiny_vsr", "tiny_vsr_config", "upscale_clip",
           "DEFAULT_WEIGHTS"]
