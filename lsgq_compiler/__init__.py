"""lsgq-compiler: low-bit quantization of one-step diffusion VSR transformers as FX graph passes.

    >>> from lsgq_compiler import compile_quantized, QuantConfig
    >>> qm = compile_quantized(model, example_inputs, QuantConfig(recipe="minmax", weight_bits=8, act_bits=8))
"""
from .api import QuantizedModel, compile_quantized
from .capture import capture
from .config import QuantConfig
from .errors import CaptureError
from .plan import LayerSpec, Plan
from .record import load_inputs, record_inputs
from . import recipes  # noqa: F401  (LSGQuant and the baseline register first)
from . import recipe_zoo  # noqa: F401  (then the peer methods)
from .registry import RECIPES

from .deploy.diffusers_quantizer import install as _install_diffusers_quantizer

_install_diffusers_quantizer()  # `lsgq` quantizer for diffusers' from_pretrained (registered lazily)

__version__ = "0.1.0"
__all__ = ["compile_quantized", "QuantizedModel", "QuantConfig", "Plan", "LayerSpec", "capture",
           "CaptureError", "RECIPES", "__version__", "export_onnx", "save_quantized", "load_quantized",
           "record_inputs", "load_inputs"]


# The backends import onnx/onnxruntime/safetensors lazily: thin wrappers here, docs where they live.
def export_onnx(qm, path, *args, **kwargs):
    """See :func:`lsgq_compiler.backends.onnx.export_onnx`."""
    from .backends.onnx import export_onnx as export
    return export(qm, path, *args, **kwargs)


def save_pretrained(obj, directory, *args, **kwargs):
    """See :func:`lsgq_compiler.deploy.checkpoint.save_pretrained`."""
    from .deploy.checkpoint import save_pretrained as save
    return save(obj, directory, *args, **kwargs)


def from_pretrained(directory, *args, **kwargs):
    """See :func:`lsgq_compiler.deploy.checkpoint.from_pretrained`."""
    from .deploy.checkpoint import from_pretrained as load
    return load(directory, *args, **kwargs)


def save_quantized(qm, directory, *args, **kwargs):
    """:func:`save_pretrained` under its older name (the deploy checkpoint is the one format).
    See :func:`lsgq_compiler.backends.artifacts.save_quantized`."""
    from .backends.artifacts import save_quantized as save
    return save(qm, directory, *args, **kwargs)


def load_quantized(directory, model=None, example_inputs=None, **kwargs):
    """:func:`from_pretrained` under its older name; ``model`` only names the class, ``example_inputs``
    is not used. See :func:`lsgq_compiler.backends.artifacts.load_quantized`."""
    from .backends.artifacts import load_quantized as load
    return load(directory, model, example_inputs, **kwargs)
