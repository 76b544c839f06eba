"""lsgq-compiler: low-bit quantization of one-step diffusion VSR transformers as FX graph passes.

    >>> from lsgq_compiler import compile_quantized, QuantConfig
    >>> qm = compile_quantized(model, example_inputs, QuantConfig(recipe="minmax", weight_bits=8, act_bits=8))
"""
from .api import QuantizedModel, compile_quantized
from .capture import capture
from .config import QuantConfig
from .errors import CaptureError
from .plan import LayerSpec, Plan
from .recipes import RECIPES

__version__ = "0.1.0"
__all__ = ["compile_quantized", "QuantizedModel", "QuantConfig", "Plan", "LayerSpec", "capture",
           "CaptureError", "RECIPES", "__version__"]
