"""Quantized-model artifacts: integer weight codes in safetensors, plan and checksums in JSON.

A folder holds two files, written together atomically (complete in a hidden staging folder,
then switched in with one atomic exchange by :func:`lsgq_compiler.fsutil.write_folder`; other
files in an earlier artifact folder are kept, a non-empty folder that is not an artifact is
refused):

- ``weights.safetensors``: per quantized linear ``{path}/weight.codes`` (uint8; two 4-bit
  codes per byte for <= 4 bits), ``weight.scale`` (float32), ``weight.zero`` (int16), the
  low-rank factors ``lr_down``/``lr_up`` in 16-bit (``lowrank_dtype``), and the layer's other
  tensors (bias, smoothing, rotation signs, activation-quantizer ranges) as they are;
- ``lsgq.json``: format name and version, the plan, the config, the shape/dtype/sha256 of
  every tensor, how each weight was coded, and a fingerprint of the base model's other
  tensors (full-precision layers, norms, embeddings), which come from the ``model`` passed
  to :func:`load_quantized`.

Loading never unpickles: only safetensors and JSON are read, and every tensor is checked
against its recorded shape and sha256 before use.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from lsgq_compiler.api import QuantizedModel, compile_quantized
from lsgq_compiler.config import QuantConfig
from lsgq_compiler.errors import user_error
from lsgq_compiler.fsutil import FolderNotOursError, write_folder
from lsgq_compiler.plan import Plan
from lsgq_compiler.quant import quantize_to_int

FORMAT = "lsgq-quantized"
FORMAT_VERSION = 1
MANIFEST = "lsgq.json"
WEIGHTS = "weights.safetensors"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save)


class ArtifactError(ValueError):
    """An artifact folder is missing, truncated, edited, of another format or version."""


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """``(..., K)`` uint8 values < 16 -> ``(..., ceil(K / 2))`` uint8, low nibble first."""
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_nibbles(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles` for a last dim of ``k``."""
    return torch.stack((p & 0xF, p >> 4), dim=-1).reshape(*p.shape[:-1], -1)[..., :k]


def _fingerprint(model: nn.Module, skip: set[str]) -> str:
    """sha256 over the model tensors the artifact does not hold (float32 view, sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name in skip or not isinstance(t, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(_sha256(t.float() if t.is_floating_point() else t).encode())
    return h.hexdigest()


def _plan_sha256(manifest: dict) -> str:
    """sha256 over what the manifest says about the model apart from the tensors (plan, config,
    coding, shapes, the base-model fingerprint): an edited plan fails this check."""
    keys = ("plan", "config", "model_class", "input_shapes", "lowrank_dtype", "coding", "base_model_sha256")
    return hashlib.sha256(json.dumps({k: manifest.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


def _covered(qm_paths: Iterable[str]) -> set[str]:
    return {f"{p}.{k}" for p in qm_paths for k in ("weight", "bias")}


def save_quantized(qm: QuantizedModel, directory: str | os.PathLike, model: nn.Module | None = None,
                   lowrank_dtype: torch.dtype = torch.float16) -> Path:
    """Write ``qm`` to ``directory`` (replaced atomically if it holds an earlier artifact).

    Args:
        qm: a QuantizedModel from :func:`~lsgq_compiler.compile_quantized` (not a lowered one).
        directory: the artifact folder.
        model: the full-precision model ``qm`` was compiled from; a fingerprint of its tensors
            that the artifact does not hold is stored and checked on load. Without it the
            artifact records that, and :func:`load_quantized` refuses it unless
            ``check_model=False``.
        lowrank_dtype: storage of the low-rank factors (``torch.float16``/``bfloat16``; float32
            reproduces a low-rank model bit for bit).

    Returns:
        The folder written.
    """
    if not isinstance(qm, QuantizedModel):
        raise user_error(f"save_quantized takes a QuantizedModel, got {type(qm).__name__}",
                         "save the result of compile_quantized(...)", TypeError)
    if qm.info.get("lowered"):
        raise user_error("this QuantizedModel is lowered to a backend", "save the model before lowering, "
                         "and lower after load_quantized")
    tensors: dict[str, torch.Tensor] = {}
    coding: dict[str, Any] = {}
    layers = qm.quant_linears()
    for path, m in layers.items():
        s = m.spec
        for key, t in m.state_dict().items():
            if t is None:
                continue
            t = t.detach().cpu()
            name = f"{path}/{key}"
            if key == "weight" and not s.quantized:
                continue  # a full-precision layer: its weight comes from the model
            if key == "weight" and s.weight_bits:
                gran = s.weight_granularity
                q, scale, zero = quantize_to_int(t.float(), s.weight_bits, s.weight_symmetric, gran, s.group_size)
                offset = 2 ** (s.weight_bits - 1) if s.weight_symmetric else 0
                codes = (q.to(torch.int16) + offset).to(torch.uint8).reshape(t.shape)
                packed = s.weight_bits <= 4
                tensors[f"{name}.codes"] = pack_nibbles(codes) if packed else codes
                tensors[f"{name}.scale"] = scale.float().reshape(t.shape[0], -1)
                tensors[f"{name}.zero"] = (zero + offset).to(torch.int16).reshape(t.shape[0], -1)
                coding[path] = {"bits": s.weight_bits, "granularity": gran, "group_size": s.group_size,
                                "offset": offset, "shape": list(t.shape), "packed": packed}
            elif key in ("lr_down", "lr_up"):
                tensors[name] = t.to(lowrank_dtype)
            else:
                tensors[name] = t
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "plan": qm.plan.to_dict(), "config": qm.config.to_dict(), "model_class": qm.plan.model_class,
        "input_shapes": {k: list(v) for k, v in qm.info.get("input_shapes", {}).items()},
        "lowrank_dtype": str(lowrank_dtype).replace("torch.", ""), "weights": WEIGHTS, "coding": coding,
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "sha256": _sha256(v)}
                    for k, v in tensors.items()},
        "base_model_sha256": _fingerprint(model, _covered(layers)) if model is not None else None,
        "saved_with_model": model is not None,
    }
    manifest["plan_sha256"] = _plan_sha256(manifest)
    return _write_atomically(Path(directory), tensors, manifest)


def _owned_files(directory: Path) -> list[str] | None:
    """The files an existing artifact folder wrote (from its manifest), or None if the folder is
    not an lsgq artifact (no manifest, not JSON, another format, or its files are not there)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    files = manifest.get("files", [MANIFEST, manifest.get("weights")])
    if not isinstance(files, list) or not all(isinstance(f, str) and f and Path(f).name == f for f in files):
        return None
    if not all((directory / f).is_file() for f in files if f != MANIFEST):
        return None
    return sorted({*files, MANIFEST})


def _write_atomically(directory: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """Write the artifact through :func:`lsgq_compiler.fsutil.write_folder`: complete in a staging
    folder, switched in atomically; files the user added to an earlier artifact are kept."""
    from safetensors.torch import save_file

    _recover_legacy(directory)
    manifest = {**manifest, "files": [MANIFEST, WEIGHTS]}

    def write(stage: Path) -> None:
        save_file(tensors, str(stage / WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))

    try:
        return write_folder(directory, write, owned_files=_owned_files, kind="lsgq artifact")
    except FolderNotOursError as e:
        raise user_error(str(e).split("\n")[0], "save into an empty or new folder, or an earlier lsgq artifact "
                         "(its lsgq.json names format 'lsgq-quantized')", ArtifactError) from None


def _recover_legacy(directory: Path) -> None:
    """Older versions switched with two renames via ``.NAME.old-PID``: move a surviving old artifact
    back if the destination is missing, and drop such leftovers of dead processes."""
    for p in sorted(directory.parent.glob(f".{directory.name}.old-*")) + sorted(
            directory.parent.glob(f".{directory.name}.tmp-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if p.name.startswith(f".{directory.name}.old-") and not pid.isdigit():
            continue
        if p.name.startswith(f".{directory.name}.old-") and not os.path.lexists(directory):
            os.rename(p, directory)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _fail(directory: Path, what: str, todo: str = "re-save it with save_quantized") -> ArtifactError:
    return user_error(f"artifact {directory}: {what}", todo, ArtifactError)


def read_artifact(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and verify an artifact folder: ``(manifest, tensors)``; raises :class:`ArtifactError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    if d.is_file():
        raise _fail(d, "is a file, not an artifact folder",
                    "pass the folder written by save_quantized (it holds lsgq.json and weights.safetensors)")
    if not (d / MANIFEST).is_file():
        raise _fail(d, f"has no {MANIFEST}", "pass a folder written by save_quantized")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(d, f"{MANIFEST} is not valid JSON ({e}); truncated or edited?") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(d, f"{MANIFEST} is not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _fail(d, f"format version {version!r} is not supported (this lsgq-compiler reads <= {FORMAT_VERSION})",
                    "upgrade lsgq-compiler, or re-save with this version")
    name = manifest.get("weights", "")
    wpath = d / str(name)
    if not str(name).endswith(".safetensors") or Path(str(name)).name != name:
        raise _fail(d, f"weights file {name!r} is not a .safetensors file in the folder",
                    "only safetensors weights are loaded (never pickle)")
    if not wpath.is_file():
        raise _fail(d, f"weights file {name} is missing")
    with open(wpath, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise _fail(d, f"{name} is a pickle / torch.save file, not safetensors; refusing to load it",
                    "lsgq-compiler never unpickles; re-save with save_quantized")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _fail(d, f"{name} is not a readable safetensors file ({str(e).splitlines()[0][:160]}); truncated?") from None
    if manifest.get("plan_sha256") != _plan_sha256(manifest):
        raise _fail(d, f"its plan, config or coding fails the {MANIFEST} checksum (plan_sha256): it was edited, "
                    "or saved by an older lsgq-compiler without that checksum",
                    "re-save it with save_quantized; to change a plan, edit Plan.save's JSON and recompile")
    try:
        Plan.from_dict(manifest.get("plan"))
    except (ValueError, TypeError) as e:
        raise _fail(d, f"its plan is invalid: {str(e).splitlines()[0]}") from None
    expected = manifest.get("tensors", {})
    if set(expected) != set(tensors):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise _fail(d, f"tensors do not match the manifest (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, meta in expected.items():
        t = tensors[k]
        if list(t.shape) != meta["shape"] or str(t.dtype).replace("torch.", "") != meta["dtype"]:
            raise _fail(d, f"tensor {k} is {t.dtype} {tuple(t.shape)}, the manifest says {meta['dtype']} "
                        f"{tuple(meta['shape'])}")
        if _sha256(t) != meta["sha256"]:
            raise _fail(d, f"tensor {k} fails its sha256 check: the file was edited or corrupted")
    return manifest, tensors


def _quant_state(manifest: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Artifact tensors -> ``quant_state`` for ``compile_quantized`` (weights dequantized exactly)."""
    state: dict[str, torch.Tensor] = {}
    coding = manifest["coding"]
    for name, t in tensors.items():
        path, _, key = name.rpartition("/")
        if key.startswith("weight."):
            if key != "weight.codes":
                continue
            c = coding[path]
            n, k = c["shape"]
            codes = unpack_nibbles(t, k) if c["packed"] else t
            scale, zero = tensors[f"{path}/weight.scale"], tensors[f"{path}/weight.zero"].float()
            g = scale.shape[1]
            q = codes.reshape(n, g, k // g).float()
            # (q - z) * s, as the fake quantizer computes it: equal bit for bit to Qw(W_R)
            w = (q - zero[..., None]) * scale[..., None]
            state[f"{path}/weight"] = w.reshape(n, k)
        elif key in ("lr_down", "lr_up"):
            state[name] = t.float()
        else:
            state[name] = t
    return state


def load_quantized(directory: str | os.PathLike, model: nn.Module, example_inputs: Any,
                   check_model: bool = True, progress: bool = False) -> QuantizedModel:
    """Rebuild a QuantizedModel from an artifact: recompile ``model`` with the saved plan and
    restore the saved tensors.

    Args:
        directory: a folder written by :func:`save_quantized`.
        model: the full-precision model the artifact was made from (its structure, and the
            tensors the artifact does not hold: full-precision layers, norms, embeddings).
        example_inputs: inputs at the shapes to run (the plan re-applies at other shapes).
        check_model: refuse a ``model`` whose other tensors differ from the one saved with, and
            refuse an artifact saved without ``model=`` (nothing to check against);
            ``check_model=False`` is the explicit opt-out.

    Quantized weights are restored on their quantization grid and kept there (``wq`` is
    None: the dequantized codes are the weights), so outputs match the saved model bit for bit,
    except that low-rank factors saved in 16-bit (the default) carry that rounding; save with
    ``lowrank_dtype=torch.float32`` for a bit-exact low-rank model. Training passes are skipped
    (a zero time budget: the trained tensors come from the artifact); the recipe's calibration
    passes run again on ``example_inputs``, so loading costs about a compile without training.
    """
    manifest, tensors = read_artifact(directory)
    d = Path(directory)
    plan = Plan.from_dict(manifest["plan"])
    saved = copy.deepcopy(plan)
    config = QuantConfig.from_dict(manifest["config"])
    if check_model and not manifest.get("base_model_sha256"):
        raise _fail(d, "was saved without model=, so the base model it loads into (its full-precision layers, "
                    "norms, embeddings) cannot be checked", "pass check_model=False to load it anyway, at your risk, "
                    "or re-save with save_quantized(qm, directory, model=base_model)")
    if check_model:
        if _fingerprint(model, _covered(plan.layers)) != manifest["base_model_sha256"]:
            raise _fail(d, f"the given {type(model).__name__} differs from the model it was saved with "
                        "(full-precision layers, norms or embeddings changed)",
                        "pass the same base model weights, or check_model=False to load anyway")
    fast = dataclasses.replace(config, time_budget_s=1e-9)
    try:
        qm = compile_quantized(model, example_inputs, fast, calib_data=[example_inputs], plan=plan,
                               quant_state=_quant_state(manifest, tensors), progress=progress)
    except ValueError as e:
        raise _fail(d, f"does not fit this model: {str(e).splitlines()[0]}",
                    "load it into the model (and class) it was saved from") from None
    for path, m in qm.quant_linears().items():
        if m.spec.weight_bits:
            m.wq = None  # the restored weight is already Qw(W_R)
            m._wcache = None
        ref = saved.layers.get(path)
        if ref is not None:
            for f in dataclasses.fields(ref):
                setattr(m.spec, f.name, copy.deepcopy(getattr(ref, f.name)))
    qm.config = config
    qm.plan.config = saved.config
    qm.info["loaded_from"] = str(d)
    return qm
