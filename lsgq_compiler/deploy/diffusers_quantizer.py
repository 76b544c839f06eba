"""An ``lsgq`` quantizer for diffusers, so ``WanTransformer3DModel.from_pretrained(dir)`` (and
``DiffusionPipeline.from_pretrained``) load an lsgq checkpoint natively.

diffusers (checked: 0.42.x) has no public registry for third-party quantizers; it looks
``quant_method`` up at call time in two plain dicts of ``diffusers/quantizers/auto.py``. We add
``"lsgq"`` to both, once that module is imported (:func:`install`, called by ``import
lsgq_compiler``, registers at once if diffusers is loaded, else from an import hook, so
importing lsgq_compiler stays cheap). Other diffusers versions: not registered, with a warning
on first use; :func:`lsgq_compiler.from_pretrained` always works.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from enum import Enum
from pathlib import Path
from typing import Any

AUTO = "diffusers.quantizers.auto"
SUPPORTED = ("0.42.",)


def _make_classes():
    import torch
    from diffusers.quantizers.base import DiffusersQuantizer
    from diffusers.quantizers.quantization_config import QuantizationConfigMixin

    class LsgqMethod(str, Enum):
        LSGQ = "lsgq"

    class LsgqConfig(QuantizationConfigMixin):
        """The ``quantization_config`` of an lsgq checkpoint (see :mod:`.checkpoint`)."""

        def __init__(self, **payload: Any) -> None:
            payload.pop("quant_method", None)
            self.payload = payload
            self.quant_method = LsgqMethod.LSGQ

        @classmethod
        def from_dict(cls, config_dict, return_unused_kwargs=False, **kwargs):
            cfg = cls(**config_dict)
            return (cfg, kwargs) if return_unused_kwargs else cfg

        def to_dict(self) -> dict[str, Any]:
            return {"quant_method": "lsgq", **self.payload}

        def to_diff_dict(self) -> dict[str, Any]:
            return self.to_dict()

    class LsgqQuantizer(DiffusersQuantizer):
        """Swaps in empty deploy layers and 8-bit attention processors before the weights load,
        restores the deploy tensors' storage dtypes after (diffusers casts float tensors)."""

        requires_calibration = False
        use_keep_in_fp32_modules = True

        def __init__(self, quantization_config, **kwargs):
            super().__init__(quantization_config, **kwargs)
            self.pre_quantized = True

        def validate_environment(self, *args, **kwargs):
            from .checkpoint import FORMAT_VERSION
            from lsgq_compiler.errors import user_error

            v = self.quantization_config.payload.get("format_version")
            if not isinstance(v, int) or v > FORMAT_VERSION:
                raise user_error(f"lsgq checkpoint format version {v!r} is newer than this lsgq-compiler reads "
                                 f"({FORMAT_VERSION})", "upgrade lsgq-compiler")

        def update_torch_dtype(self, torch_dtype):
            return torch_dtype

        def check_if_quantized_param(self, model, param_value, param_name, state_dict, **kwargs) -> bool:
            return False

        def maybe_update_loaded_keys(self, loaded_keys, checkpoint_files, *args, **kwargs):
            """The folder's checks of ``lsgq_compiler.from_pretrained`` (config checksum, every weights
            file's sha256) before diffusers reads a tensor."""
            from .checkpoint import read_config, verify_files

            if checkpoint_files:
                self._folder = Path(checkpoint_files[0]).parent
                _, qc = read_config(self._folder)
                verify_files(self._folder, qc)
            return loaded_keys

        def _process_model_before_weight_loading(self, model, **kwargs):
            from .module_form import apply_attention, build_skeleton_layers

            qc = self.quantization_config.payload
            build_skeleton_layers(model, qc.get("layers", {}), device="meta")
            apply_attention(model, qc.get("attention", {}))
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            from .modules import DeployLinear

            from .checkpoint import relayout
            from .module_form import prepare

            for m in model.modules():
                if isinstance(m, DeployLinear):
                    m.restore_dtypes()
            folder = getattr(self, "_folder", None)
            if folder is not None:
                relayout(model, self.quantization_config.payload, folder)
            prepare(model)
            model._lsgq_quantization_config = self.quantization_config.payload
            return model

        @property
        def is_serializable(self):
            return False

        @property
        def is_trainable(self) -> bool:
            return False

        @property
        def is_compileable(self) -> bool:
            return True

    del torch
    return LsgqConfig, LsgqQuantizer


_REGISTERED = False


def register() -> bool:
    """Add ``lsgq`` to diffusers' quantizer mappings (idempotent). Returns whether it is registered."""
    global _REGISTERED
    if _REGISTERED:
        return True
    import diffusers

    if not diffusers.__version__.startswith(SUPPORTED):
        import warnings

        warnings.warn(f"diffusers {diffusers.__version__}: the lsgq quantizer is registered only for diffusers "
                      f"{'/'.join(v + 'x' for v in SUPPORTED)}; load lsgq checkpoints with "
                      "lsgq_compiler.from_pretrained(dir)", stacklevel=2)
        return False
    auto = sys.modules.get(AUTO) or importlib.import_module(AUTO)
    cfg, quantizer = _make_classes()
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault("lsgq", cfg)
    auto.AUTO_QUANTIZER_MAPPING.setdefault("lsgq", quantizer)
    _REGISTERED = True
    return True


class _Hook(importlib.abc.MetaPathFinder):
    """Registers right after ``diffusers.quantizers.auto`` is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != AUTO:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            pass
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        orig = loader.exec_module

        def exec_module(module):
            orig(module)
            try:
                register()
            except Exception:  # noqa: BLE001 - never break importing diffusers
                pass

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if diffusers' quantizer module is loaded, else when it is."""
    if AUTO in sys.modules:
        try:
            register()
        except Exception:  # noqa: BLE001
            pass
        return
    if not any(isinstance(h, _Hook) for h in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
