"""The deploy checkpoint: a diffusers component folder of plain tensors.

``save_pretrained(qm, dir)`` writes

- ``config.json``: the model's diffusers config plus ``quantization_config``: ``quant_method:
  "lsgq"``, ``format_version``, ``target``, per-layer deploy configs (kind, shapes, rank, Hadamard
  block, ...), attention decisions, the plan, the sha256 of every weights file, and
  ``strides`` of the tensors that were not contiguous (restored on load, like 64-byte alignment:
  CPU GEMMs round by memory layout, so the loaded model computes what the saved one did), and
  ``config_sha256`` over the rest of ``config.json`` (an edited plan or layer config is refused);
- ``diffusion_pytorch_model.safetensors`` (or numbered shards with an ``.index.json``): plain
  tensors only (packed int4 codes as uint8, scales, FP8/int8 weights, bf16 low-rank factors,
  the model's full-precision tensors), never pickles or tensor subclasses,

atomically (:func:`lsgq_compiler.fsutil.write_folder`: staged, then switched). ``from_pretrained(dir)`` builds the model's own class
with parameters on the meta device (``accelerate.init_empty_weights``), swaps in empty deploy
layers and assigns the stored tensors: no base model, no calibration, no full-precision copy.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsgq_compiler.errors import user_error
from lsgq_compiler.fsutil import file_sha256, write_folder

from .module_form import (FORMAT_VERSION, QUANT_METHOD, apply_attention, build_skeleton_layers, cast_float,
                          is_module_form, prepare, source_model, to_module_form)
from .targets import KINDS, TARGETS, check_device

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
_PRIVATE = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "quantization_config")
LEGACY_MANIFEST = "lsgq.json"  # the artifact format of earlier save_quantized versions (no longer read)


class CheckpointError(ValueError):
    """A checkpoint folder is missing, truncated, edited, or of another class, format or target."""


def _fail(d: Path, what: str, todo: str) -> CheckpointError:
    return user_error(f"checkpoint {d}: {what}", todo, CheckpointError)


def _config_sha256(cfg: dict[str, Any]) -> str:
    """sha256 of ``config.json``'s content apart from this checksum (canonical JSON)."""
    qc = {k: v for k, v in cfg.get("quantization_config", {}).items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps({**cfg, "quantization_config": qc}, sort_keys=True).encode()).hexdigest()


def _model_config(model: nn.Module) -> dict[str, Any]:
    if not hasattr(model, "to_json_string") or not hasattr(model, "config"):
        raise user_error(f"{type(model).__name__} is not a diffusers model (no .config), and a checkpoint is a "
                         "diffusers component folder", "quantize a diffusers ModelMixin (e.g. WanTransformer3DModel); "
                         "for another nn.Module keep qm.plan.save(path) and qm.quant_state_dict(), and rebuild with "
                         "compile_quantized(model, inputs, config, plan=..., quant_state=...)", TypeError)
    cfg = json.loads(model.to_json_string())
    cfg["_class_name"] = type(model).__name__
    return cfg


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    out: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nb = v.numel() * v.element_size()
        if out[-1] and size + nb > max_bytes:
            out.append({})
            size = 0
        out[-1][k] = v
        size += nb
    return out


def save_pretrained(obj: Any, directory: str | os.PathLike, model: nn.Module | None = None,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write the deploy checkpoint of ``obj`` to ``directory`` (replaced atomically).

    Args:
        obj: a :class:`~lsgq_compiler.QuantizedModel` or its module form (:func:`to_module_form`).
        directory: the folder (a diffusers component folder: ``config.json`` + safetensors).
        model: the user's eager model ``obj`` was compiled from (default: the one given to
            ``compile_quantized``, if still alive); unused for a module form.
        max_shard_bytes: largest safetensors shard.

    Returns:
        The folder written.
    """
    from safetensors.torch import save_file

    if not is_module_form(obj):
        _model_config(source_model(obj, model))  # refuse a non-diffusers model before copying it
    module = obj if is_module_form(obj) else to_module_form(obj, model)
    qc = dict(module._lsgq_quantization_config)
    cfg = _model_config(module)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    strides: dict[str, list[int]] = {}
    for k, v in module.state_dict().items():
        t = v.detach().cpu()
        if t.data_ptr() in seen and t.numel():  # tied tensors: safetensors stores each once per name
            t = t.clone()
        seen[t.data_ptr()] = k
        if not t.is_contiguous() and _dense(t):  # e.g. SVD factors: CPU GEMMs round by memory layout
            strides[k] = list(t.stride())
        tensors[k] = t.contiguous()
    qc["strides"] = strides
    shards = _shards(tensors, max_shard_bytes)
    names = [WEIGHTS] if len(shards) == 1 else \
        [f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    def write(stage: Path) -> None:
        files = {}
        for name, shard in zip(names, shards):
            save_file(shard, str(stage / name), metadata={"format": "pt"})  # one key: safetensors writes several in random order (H-E, #18)
            files[name] = file_sha256(stage / name)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in tensors.values())},
                     "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
            (stage / INDEX).write_text(json.dumps(index, indent=1))
        qc["files"] = files
        qc["num_tensors"] = len(tensors)
        cfg["quantization_config"] = qc
        qc["config_sha256"] = _config_sha256(cfg)
        (stage / CONFIG).write_text(json.dumps(cfg, indent=1))

    d = write_folder(Path(directory), write, owned_files=_owned_files, kind="lsgq checkpoint")
    return d


def _owned_files(folder: Path) -> list[str] | None:
    """The files an existing lsgq checkpoint folder wrote (from its config.json), or None if it is not one.
    An artifact of the earlier format is ours too: a save replaces it."""
    if not (folder / CONFIG).exists():
        return _legacy_artifact_files(folder)
    try:
        qc = json.loads((folder / CONFIG).read_text()).get("quantization_config", {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        return None
    files = list(qc.get("files", {}))
    return [CONFIG, *files] + ([INDEX] if len(files) > 1 else [])


def _legacy_artifact_files(folder: Path) -> list[str] | None:
    """The files an artifact of the earlier ``save_quantized`` format wrote (``lsgq.json`` names them), or None."""
    try:
        man = json.loads((folder / LEGACY_MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(man, dict) or man.get("format") != "lsgq-quantized":
        return None
    files = man.get("files", [LEGACY_MANIFEST, man.get("weights")])
    if not isinstance(files, list) or not all(isinstance(f, str) and f and Path(f).name == f for f in files):
        return None
    return sorted({*files, LEGACY_MANIFEST})


def read_config(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model config, quantization_config)`` of a checkpoint folder, validated."""
    d = Path(directory)
    if d.is_file():
        raise _fail(d, "is a file, not a checkpoint folder", f"pass the folder save_pretrained wrote (it holds {CONFIG})")
    if not (d / CONFIG).is_file() and _legacy_artifact_files(d) is not None:
        raise _fail(d, f"is an artifact of the earlier save_quantized format ({LEGACY_MANIFEST}), which this "
                    "lsgq-compiler no longer reads", "compile the model again and save it with save_quantized or "
                    "save_pretrained (a checkpoint that loads without the base model)")
    if not (d / CONFIG).is_file():
        raise _fail(d, f"has no {CONFIG}", "pass a folder written by lsgq_compiler.save_pretrained")
    try:
        cfg = json.loads((d / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(d, f"{CONFIG} is not valid JSON ({e}); truncated or edited?", "re-save it") from None
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise _fail(d, "is not an lsgq checkpoint (no quantization_config with quant_method 'lsgq')",
                    "load other checkpoints with diffusers' from_pretrained")
    v = qc.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise _fail(d, f"format version {v!r} is newer than this lsgq-compiler reads ({FORMAT_VERSION})",
                    "upgrade lsgq-compiler (pip install -U lsgq-compiler)")
    if v >= 2 and qc.get("config_sha256") != _config_sha256(cfg):
        raise _fail(d, f"{CONFIG} fails its checksum (config_sha256): its plan, layer configs or model config "
                    "were edited", "re-save it with save_pretrained; to change a plan, edit Plan.save's JSON and "
                    "compile again")
    if qc.get("target") not in TARGETS:
        raise _fail(d, f"unknown target {qc.get('target')!r}", "upgrade lsgq-compiler")
    return cfg, qc


def check_kernel_library(target: str, kinds: set[str], find_spec: Any = None) -> None:
    """Refuse (naming the pip package) when a CUDA target's int4 kernels need ``mslk`` and it is missing."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    if TARGETS[target].device != "cuda" or not kinds & {"int4_fp8", "int4_weight"}:
        return
    if find_spec("mslk") is None:
        raise user_error(f"this {target} checkpoint has int4 layers, whose kernels come from the mslk library, "
                         "which is not installed", "pip install 'lsgq-compiler[cuda]' (installs mslk-cuda==1.1.0)",
                         ImportError)


def from_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu",
                    torch_dtype: torch.dtype | None = None, model_class: type | None = None,
                    allow_reference: bool = False) -> nn.Module:
    """Load a checkpoint written by :func:`save_pretrained` as an instance of the model's own class.

    Args:
        directory: the checkpoint folder.
        device: where the model runs. A CUDA target's checkpoint needs a GPU of its compute
            capability (see :mod:`.targets`), unless ``allow_reference`` runs it on the CPU.
        torch_dtype: cast the full-precision parameters to this dtype (e.g. ``torch.bfloat16``).
        model_class: the class expected (refuses a checkpoint of another class); default: the
            class named in ``config.json`` (looked up in ``diffusers``).
        allow_reference: run a CUDA target's layers on the CPU with the float reference of the
            same numbers (slow; for checking).

    Returns:
        The model (eval mode), planned linears as ``DeployLinear``, quantized attention with 8-bit
        processors.
    """
    import diffusers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    cfg, qc = read_config(d)
    target = qc["target"]
    dev = torch.device(device)
    if not (allow_reference and dev.type == "cpu"):
        check_device(target, dev)
    kinds = {c["kind"] for c in qc.get("layers", {}).values()}
    if dev.type == "cuda":
        check_kernel_library(target, kinds)
    name = cfg.get("_class_name", "")
    if model_class is not None and model_class.__name__ != name:
        raise _fail(d, f"holds a {name}, not a {model_class.__name__}", f"load it with {name}.from_pretrained "
                    "or lsgq_compiler.from_pretrained")
    cls = model_class or getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise _fail(d, f"model class {name!r} is not a diffusers model class", "pass model_class=YourModelClass")
    files = verify_files(d, qc)
    state: dict[str, torch.Tensor] = {}
    for fname in files:
        try:
            loaded = load_file(str(d / fname), device="cpu" if dev.type != "cuda" else str(dev))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _fail(d, f"{fname} is not readable safetensors ({str(e)[:120]})", "re-save it") from None
        state.update(loaded)
    for k, t in state.items():
        state[k] = _laid_out(t, qc.get("strides", {}).get(k), d, k)
    if len(state) != qc.get("num_tensors", len(state)):
        raise _fail(d, f"has {len(state)} tensors, config.json says {qc['num_tensors']}", "re-save it")
    model = build_empty(cls, cfg, qc)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
        raise _fail(d, f"tensors do not fit {name} ({str(e).splitlines()[0][:200]})", "re-save it") from None
    if missing or unexpected:
        raise _fail(d, f"tensors do not match {name} (missing {sorted(missing)[:3]}, unexpected "
                    f"{sorted(unexpected)[:3]})", "the checkpoint was edited or belongs to another model version")
    if torch_dtype is not None:
        cast_float(model, torch_dtype)
    model = model.to(dev)
    left = [k for k, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise _fail(d, f"tensors {left[:3]} were not stored", "re-save it with this lsgq-compiler")
    prepare(model)
    model._lsgq_quantization_config = qc
    return model.eval()


def verify_files(d: Path, qc: dict[str, Any]) -> dict[str, str]:
    """Check every weights file ``qc`` lists (safetensors in the folder, present, sha256); returns them."""
    files = qc.get("files", {})
    if not files:
        raise _fail(d, "lists no weights files", "re-save it with save_pretrained")
    for fname, sha in files.items():
        p = d / fname
        if Path(fname).name != fname or not fname.endswith(".safetensors"):
            raise _fail(d, f"weights file {fname!r} is not a .safetensors file in the folder",
                        "only safetensors are loaded (never pickle)")
        if not p.is_file():
            raise _fail(d, f"weights file {fname} is missing", "copy the whole folder")
        if file_sha256(p) != sha:
            raise _fail(d, f"{fname} fails its sha256 check: truncated, edited or corrupted", "re-save or re-copy it")
    return files


def relayout(model: nn.Module, qc: dict[str, Any], d: Path) -> None:
    """Give every loaded tensor of ``model`` its saved strides and 64-byte alignment (:func:`_laid_out`):
    the step diffusers' own loader lacks."""
    strides = qc.get("strides", {})
    for mod_name, mod in model.named_modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in list(store.items()):
                if t is None or t.is_meta:
                    continue
                key = f"{mod_name}.{k}" if mod_name else k
                new = _laid_out(t.data, strides.get(key), d, key)
                if new is not t.data:
                    store[k] = nn.Parameter(new, requires_grad=t.requires_grad) if store is mod._parameters else new


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s strides are a permutation of a contiguous layout (no gaps, no overlaps)."""
    order = sorted(range(t.dim()), key=lambda i: -t.stride(i))
    return t.permute(order).is_contiguous()


def _laid_out(t: torch.Tensor, stride: list[int] | None, d: Path, key: str) -> torch.Tensor:
    """A stored tensor in the memory the saved model computed with: the recorded ``stride`` (else
    contiguous), 64-byte aligned. CPU GEMMs round differently on other layouts and on unaligned
    memory (safetensors' CPU tensors lie at 8-byte offsets), so this makes the loaded model compute
    what the saved one did."""
    if stride is not None:
        if len(stride) != t.dim() or not _dense(torch.empty_strided(t.shape, stride, device="meta")):
            raise _fail(d, f"the recorded strides of {key} do not fit its shape {tuple(t.shape)}", "re-save it")
        return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)
    return t if t.device.type != "cpu" or t.data_ptr() % 64 == 0 else t.clone()


def build_empty(cls: type, cfg: dict[str, Any], qc: dict[str, Any]) -> nn.Module:
    """``cls`` from its config with parameters on the meta device, planned linears as empty
    deploy layers, 8-bit attention processors in place."""
    from accelerate import init_empty_weights

    kw = {k: v for k, v in cfg.items() if k not in _PRIVATE}
    with init_empty_weights():
        model = cls.from_config(kw)
    build_skeleton_layers(model, qc.get("layers", {}), device="meta")
    apply_attention(model, qc.get("attention", {}))
    return model


def kinds_of(qc: dict[str, Any]) -> dict[str, str]:
    """Layer -> kind, and which run real kernels on each device (for reports)."""
    return {p: c["kind"] for p, c in qc.get("layers", {}).items() if c["kind"] in KINDS or c["kind"] == "sim"}
