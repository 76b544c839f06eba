"""Record a transformer's call arguments while the user's own pipeline runs, as safetensors.

    >>> with lsgq_compiler.record_inputs(pipe.transformer, "calib.safetensors", max_calls=8):
    ...     pipe(...)                                   # the user's own pipeline, a few clips
    >>> batches = lsgq_compiler.load_inputs("calib.safetensors")   # list of keyword-input dicts
    >>> qm = compile_quantized(pipe.transformer, batches[0], cfg, calib_data=batches)

A forward pre-hook (with keyword arguments) copies each call's inputs to the CPU: tensors,
tuples/lists and dicts of tensors (e.g. CogVideoX's ``image_rotary_emb``), ``None`` and
JSON-able scalars. Positional arguments are stored under their parameter names from the
module's ``forward`` signature, so every recorded call reads back as one keyword dict.
``return_dict`` is dropped (the compiler sets it). The file is one safetensors file, written
on exit to a temporary name and renamed (never half-written); its metadata holds the
structure of every call as JSON, the model class and its config. Nothing is ever pickled.
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import user_error

RECORD_FORMAT = "lsgq-inputs"
RECORD_VERSION = 1
META_KEY = "lsgq_inputs"
_DROP = ("return_dict",)


class RecordError(ValueError):
    """A calibration-inputs file is missing, not ours, of a newer version, or does not fit a model."""


def _config_of(module: nn.Module) -> dict[str, Any]:
    cfg = getattr(module, "config", None)
    if cfg is None:
        return {}
    items = dict(cfg) if hasattr(cfg, "keys") else dict(vars(cfg))
    out = {}
    for k, v in items.items():
        if k.startswith("_") and k != "_class_name":
            continue
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """Value -> JSON structure node; tensors go to ``tensors[key]`` (detached, contiguous, CPU)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_sparse or t.layout != torch.strided:
            raise user_error(f"{where} is a {t.layout} tensor", "record only dense tensors", TypeError)
        if type(t) is not torch.Tensor:  # a tensor subclass (e.g. a quantized one): keep the plain data
            t = torch.Tensor(t)
        tensors[key] = t.to("cpu", copy=True).contiguous()
        return {"t": "tensor", "key": key}
    if value is None:
        return {"t": "none"}
    if isinstance(value, (bool, int, float, str)):
        return {"t": "value", "v": value}
    if isinstance(value, (tuple, list)):
        return {"t": "tuple" if isinstance(value, tuple) else "list",
                "items": [_encode(v, f"{key}.{i}", tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise user_error(f"{where} is a dict with non-string keys {bad[:3]}", "record only str-keyed dicts",
                             TypeError)
        return {"t": "dict", "items": {k: _encode(v, f"{key}.{k}", tensors, f"{where}[{k!r}]")
                                       for k, v in value.items()}}
    raise user_error(f"{where} is a {type(value).__name__}, which cannot be recorded",
                     "record_inputs stores tensors, tuples/lists/dicts of tensors, None and JSON scalars; "
                     "call the transformer with those", TypeError)


def _decode(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    kind = node["t"]
    if kind == "tensor":
        return tensors[node["key"]]
    if kind == "none":
        return None
    if kind == "value":
        return node["v"]
    if kind in ("tuple", "list"):
        items = [_decode(n, tensors) for n in node["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _decode(n, tensors) for k, n in node["items"].items()}
    raise RecordError(f"unknown structure node {kind!r}")


def _positional_names(module: nn.Module, n: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) < n:
        raise user_error(f"{type(module).__name__} was called with {n} positional arguments but its forward "
                         f"names only {len(params)}", "call the module with keyword arguments", TypeError)
    return [p.name for p in params[:n]]


class _Recorder:
    def __init__(self, module: nn.Module, max_calls: int, every: int) -> None:
        self.module, self.max_calls, self.every = module, max_calls, every
        self.calls: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.seen = 0

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        i = self.seen
        self.seen += 1
        if i % self.every or len(self.calls) >= self.max_calls:
            return
        c = len(self.calls)
        named = dict(zip(_positional_names(module, len(args)), args))
        both = set(named) & set(kwargs)
        if both:
            raise user_error(f"{sorted(both)} given both positionally and by keyword", "fix the call", TypeError)
        named.update(kwargs)
        struct = {k: _encode(v, f"{c}/{k}", self.tensors, f"call {i} input {k!r}")
                  for k, v in named.items() if k not in _DROP}
        if not any(k.startswith(f"{c}/") for k in self.tensors):
            raise user_error(f"call {i} of {type(module).__name__} has no tensor input", "nothing to record",
                             TypeError)
        self.calls.append(struct)


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a calibration file is ordinary data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def record_inputs(module: nn.Module, path: str | os.PathLike, max_calls: int = 8, every: int = 1) -> Iterator[Any]:
    """Record ``module``'s call arguments inside the ``with`` block; write ``path`` on exit.

    Args:
        module: the transformer (e.g. ``pipe.transformer``; the shipped ``vsr.transformer``).
        path: the ``.safetensors`` file to write (parent folders are created).
        max_calls: keep at most this many calls (later ones run normally, unrecorded).
        every: keep every ``every``-th call (e.g. one timestep in 4 of a multi-step sampler).

    Yields:
        the recorder; ``len(rec.calls)`` is the number of calls kept so far.

    Each kept call costs a CPU copy of its inputs (e.g. DOVE at 18k tokens: latents
    ``(1, 16, 13, 60, 90)`` and text embeddings ``(1, 226, 4096)``, about 7.6 MB in bf16).
    If the block raises, nothing is written. No call recorded: ``ValueError``.
    """
    if not isinstance(module, nn.Module):
        raise user_error(f"record_inputs needs the transformer module, got {type(module).__name__}",
                         "pass e.g. pipe.transformer", TypeError)
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
        raise user_error(f"max_calls={max_calls!r} must be a positive int", "e.g. max_calls=8")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise user_error(f"every={every!r} must be a positive int", "e.g. every=1 (all calls)")
    path = Path(path)
    rec = _Recorder(module, max_calls, every)
    handle = module.register_forward_pre_hook(rec.hook, with_kwargs=True)
    try:
        yield rec
    finally:
        handle.remove()
    if not rec.calls:
        raise user_error(f"{type(module).__name__} was not called inside record_inputs: nothing written to {path}",
                         "run the pipeline inside the with-block, on the transformer you passed")
    meta = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "model_class": type(module).__name__,
            "model_config": _config_of(module), "calls": rec.calls, "calls_seen": rec.seen}
    _atomic_save(rec.tensors, {META_KEY: json.dumps(meta)}, path)


def read_record(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata (format, model class, model config, call structures) and tensors of a file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise RecordError(f"calibration file {p} does not exist\n  -> record one with lsgq_compiler.record_inputs "
                          "(see the README, 'Quantize your own model')")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RecordError(f"{p} is not a readable safetensors file ({str(e).splitlines()[0][:120]})\n"
                          "  -> pass a file written by lsgq_compiler.record_inputs") from None
    if meta is None:
        raise RecordError(f"{p} is a safetensors file but not recorded calibration inputs (no {META_KEY!r} "
                          "metadata)\n  -> pass a file written by lsgq_compiler.record_inputs")
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError:
        raise RecordError(f"{p}: its {META_KEY!r} metadata is not JSON\n  -> record the file again") from None
    if meta.get("format") != RECORD_FORMAT:
        raise RecordError(f"{p} has format {meta.get('format')!r}, not {RECORD_FORMAT!r}\n"
                          "  -> pass a file written by lsgq_compiler.record_inputs")
    if int(meta.get("version", 0)) > RECORD_VERSION:
        raise RecordError(f"{p} has format version {meta['version']}, newer than this lsgq-compiler reads "
                          f"({RECORD_VERSION})\n  -> upgrade lsgq-compiler")
    return meta, tensors


def load_inputs(path: str | os.PathLike, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
    """Read a file written by :func:`record_inputs`: one keyword-input dict per recorded call.

    Args:
        path: the ``.safetensors`` file.
        device: move every tensor there (default: CPU, as stored).
        dtype: cast floating-point tensors to it (e.g. the model's ``torch.float32``); integer
            tensors (timesteps) keep theirs.

    Returns:
        ``[{name: tensor | tuple | dict | scalar | None}, ...]``, ready for
        ``compile_quantized(model, batches[0], config, calib_data=batches)``.
    """
    meta, tensors = read_record(path)
    if device is not None or dtype is not None:
        tensors = {k: t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)
                   for k, t in tensors.items()}
    missing = []
    out = []
    for call in meta["calls"]:
        try:
            out.append({k: _decode(n, tensors) for k, n in call.items()})
        except KeyError as e:
            missing.append(str(e))
    if missing:
        raise RecordError(f"{path} is truncated or edited: tensors {missing[:3]} are missing\n"
                          "  -> record the file again")
    return out
