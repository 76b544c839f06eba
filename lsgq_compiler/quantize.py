"""``lsgq quantize``: the user's own diffusers transformer, their recorded inputs, a deploy checkpoint.

    lsgq quantize --model DOVE/transformer --calib calib.safetensors --recipe lsgquant --bits w4a4 \\
        --target cuda-sm90 --out dove-w4 [--size-budget GB | --min-fidelity-db X]

Across GPUs: ``torchrun --nproc-per-node N -m lsgq_compiler.cli quantize ...`` (same arguments): every
rank compiles (calibration and QAO split, :mod:`lsgq_compiler.distributed`), rank 0 alone writes.

Stages (each timed, with its peak memory; a progress bar over them, quiet without a terminal):

1. ``load``: the model class from ``DIR/config.json`` (``_class_name``), an estimate of the memory
   needed (from the parameter count, on the meta device) against what this machine has, then
   diffusers' ``from_pretrained`` from the local folder (never a download) on the best device
   (CUDA when present).
2. ``calibration``: :func:`lsgq_compiler.load_inputs`, checked against the model (class, config,
   forward signature, one eager call); the last quarter of the batches is held back for fidelity.
3. ``compile``: :func:`compile_quantized` on the other batches.
4. ``size budget`` (``--size-budget``): bits per layer re-allocated from the plan's sensitivities
   so the estimated checkpoint fits; re-applied with ``compile_quantized(..., plan=...)``.
5. ``fidelity floor`` (``--min-fidelity-db``): :func:`lsgq_compiler.fidelity.raise_until_floor`.
6. ``save``: the deploy checkpoint in ``OUT/checkpoint`` (:func:`lsgq_compiler.save_pretrained`),
   then ``verify``: loaded back with :func:`lsgq_compiler.from_pretrained` and run on the held-back batches.
7. ``report``: ``OUT/report/`` with ``plan.json``, ``plan.png`` (per-layer sensitivity, tier and
   bits), ``summary.md`` and ``summary.json``.

Every compile's result (its plan and trained tensors) is kept in ``OUT/.lsgq-stages/`` keyed by a
hash of the job and the plan it applied; a run that is interrupted and started again with the
same arguments restores finished compiles instead of redoing them (training skipped, the saved
tensors restored) and writes the same checkpoint bytes. The stage folder is removed on success.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import distributed
from .config import QuantConfig
from .errors import user_error
from .fsutil import file_sha256
from .plan import Plan, atomic_write_text

STAGES_DIR = ".lsgq-stages"
TINY_VSR = "tiny-vsr"
#: Memory a compile needs, as a multiple of the model's parameter bytes: the loaded model, the
#: captured copy, and the quantized layers' trained weights and caches.
MEMORY_FACTOR = 3.0
KNOWN_TARGETS = ("sim", "cpu", "cuda-sm80", "cuda-sm89", "cuda-sm90", "cuda-sm90-g128", "cuda-sm100")


# --------------------------------------------------------------------------------------- helpers
def parse_bits(bits: str) -> tuple[int, int]:
    """``"w4a4"`` -> ``(4, 4)``."""
    b = bits.strip().lower()
    try:
        if not (b.startswith("w") and "a" in b):
            raise ValueError
        w, a = (int(v) for v in b[1:].split("a"))
    except ValueError:
        raise user_error(f"bad --bits {bits!r}", "use the form w4a4, w4a8, w8a8") from None
    return w, a


def sqnr_db(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """Pooled SQNR ``10 log10(sum ref^2 / sum (ref - out)^2)`` over batches, in dB (inf if exact)."""
    sig = sum(float(r.double().pow(2).sum()) for r in ref)
    err = sum(float((r.double() - o.double().to(r.device)).pow(2).sum()) for r, o in zip(ref, out))
    if err == 0:
        return float("inf")
    import math

    return 10 * math.log10(max(sig, 1e-300) / err)


def available_memory(device: torch.device) -> int:
    """Bytes free for a compile: the GPU's free memory, or the host's ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


class _PeakRSS:
    """Peak resident memory of this process while a stage runs (sampled every 20 ms), and the
    CUDA allocator's peak when on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "_PeakRSS":
        self.peak = self.rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())
        self.gpu_peak = int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None


def _stage_done(name: str) -> None:
    """Called after each stage finishes (tests replace it to simulate an interrupted run)."""


# --------------------------------------------------------------------------------------- the job
@dataclass
class QuantizeJob:
    """Arguments of one ``lsgq quantize`` run (see :func:`add_quantize_parser` for their meaning)."""

    model: str
    out: str
    calib: str | None = None
    recipe: str = "lsgquant"
    bits: str = "w4a4"
    target: str = "sim"
    size_budget_gb: float | None = None
    min_fidelity_db: float | None = None
    holdout: float = 0.25
    options: dict[str, Any] = field(default_factory=dict)
    attention_bits: int | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = False
    restart: bool = False

    def fingerprint(self, model_id: str, calib_id: str) -> str:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("progress", "restart", "out", "device")}
        d.update(model_id=model_id, calib_id=calib_id)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()




def _folder_id(d: Path) -> str:
    """Identity of a model folder: config.json's hash plus the weight files' names and sizes."""
    h = hashlib.sha256((d / "config.json").read_bytes())
    for p in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------- loading
def model_class_from_folder(folder: Path) -> type:
    """The diffusers model class named by ``folder/config.json``'s ``_class_name``."""
    if not folder.is_dir():
        raise user_error(f"--model {folder} is not a folder",
                         f"pass a diffusers model folder (with config.json) or {TINY_VSR!r}", FileNotFoundError)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        if (folder / "model_index.json").is_file():
            subs = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
            raise user_error(f"{folder} is a diffusers pipeline folder, not a model folder",
                             f"pass its transformer folder, e.g. --model {folder / 'transformer'} "
                             f"(components here: {', '.join(subs) or 'none'})")
        raise user_error(f"{folder} is not a diffusers model folder: it has no config.json",
                         "pass the folder written by the model's save_pretrained (e.g. DOVE's transformer/)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise user_error(f"{cfg_path} is not valid JSON ({e})", "restore the model folder's config.json") from None
    name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if not name:
        raise user_error(f"{cfg_path} has no '_class_name', so it is not a diffusers model config",
                         "pass a folder written by a diffusers model's save_pretrained")
    import diffusers
    from diffusers import ModelMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin)):
        raise user_error(f"{cfg_path} names class {name!r}, which is not a diffusers model class "
                         f"(diffusers {diffusers.__version__})",
                         "pass a transformer folder (e.g. WanTransformer3DModel, CogVideoXTransformer3DModel), "
                         "or upgrade diffusers if the class is newer")
    if not any(folder.glob("*.safetensors")):
        raise user_error(f"{folder} has no .safetensors weights", "save the model with save_pretrained "
                         "(safe_serialization=True, the default); .bin pickles are never loaded")
    return cls


def count_parameters(cls: type, folder: Path) -> int:
    """Parameter count of the model described by ``folder/config.json``, built on the meta device."""
    cfg = cls.load_config(str(folder))
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls.from_config(cfg)
    return sum(p.numel() for p in m.parameters())


def check_memory(n_params: int, dtype: torch.dtype, device: torch.device) -> int:
    """Raise when the estimated need exceeds what ``device`` has; returns the estimate in bytes."""
    need = int(n_params * torch.finfo(dtype).bits // 8 * MEMORY_FACTOR)
    have = available_memory(device)
    if need > have:
        raise user_error(f"not enough memory on {device}: quantizing this model ({n_params / 1e9:.2f} B parameters "
                         f"in {str(dtype).replace('torch.', '')}) needs about {_gib(need)} "
                         f"({MEMORY_FACTOR:g} x the parameter bytes) but {_gib(have)} is free",
                         "free memory, use a machine (or GPU) with more, or quantize in bfloat16 (--dtype bfloat16)")
    return need


def check_target(target: str) -> None:
    """Refuse an unknown target, or one whose kernels this machine cannot run (no GPU, too old a GPU)."""
    try:
        from .deploy.targets import TARGETS  # the deploy targets (#16), when in this install
    except ImportError:
        TARGETS = None
    names = tuple(TARGETS) if TARGETS else KNOWN_TARGETS
    if target not in names:
        raise user_error(f"unknown target {target!r}", f"use one of: {', '.join(names)}")
    if TARGETS:
        need_cap = TARGETS[target].min_capability
        if TARGETS[target].device != "cuda" or need_cap is None:
            return
        need = need_cap[0] * 10 + need_cap[1]
    elif not target.startswith("cuda-"):
        return
    else:
        need = int(target.split("sm")[1])
    if not torch.cuda.is_available():
        raise user_error(f"target {target} needs an NVIDIA GPU of compute capability {need // 10}.{need % 10} or "
                         "newer, and this machine has no CUDA device",
                         "run lsgq quantize on that GPU, or pick --target cpu (or sim) here")
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < need:
        raise user_error(f"target {target} needs compute capability {need // 10}.{need % 10}; this GPU "
                         f"({torch.cuda.get_device_name()}) has {major}.{minor}",
                         f"pick the target of this GPU (cuda-sm{major}{minor}) or run on a newer GPU")


def make_config(job: QuantizeJob) -> QuantConfig:
    wb, ab = parse_bits(job.bits)
    kw: dict[str, Any] = dict(recipe=job.recipe, weight_bits=wb, act_bits=ab, options=dict(job.options),
                              seed=job.seed, attention_bits=job.attention_bits)
    if "target" in {f.name for f in dataclasses.fields(QuantConfig)}:
        kw["target"] = job.target
    return QuantConfig(**kw)


def check_calibration(meta: dict[str, Any], batches: list[dict[str, Any]], model: nn.Module, calib: str) -> None:
    """Refuse calibration inputs recorded from another model (class, config, keys, shapes)."""
    import inspect

    from .capture import ReturnTensor

    cls = type(model).__name__
    if meta.get("model_class") and meta["model_class"] != cls:
        raise user_error(f"{calib} was recorded from a {meta['model_class']}, but --model is a {cls}",
                         "record calibration inputs from this model's pipeline (lsgq_compiler.record_inputs)")
    mine = {}
    if getattr(model, "config", None) is not None:
        mine = dict(model.config)
    diffs = [f"{k}: {v!r} (recorded) vs {mine[k]!r} (model)" for k, v in sorted(meta.get("model_config", {}).items())
             if k in mine and not k.startswith("_") and _norm(mine[k]) != _norm(v)]
    if diffs:
        raise user_error(f"{calib} was recorded from a {cls} with another config: " + "; ".join(diffs[:4]),
                         "record calibration inputs from this very model (same config.json)")
    params = inspect.signature(model.forward).parameters
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = sorted({k for b in batches for k in b} - set(params))
    if unknown and not var_kw:
        raise user_error(f"{calib} has inputs {unknown} that {cls}.forward does not take "
                         f"(it takes {', '.join(k for k in params if k != 'self')})",
                         "record calibration inputs from this model's pipeline")
    shapes0 = _shapes(batches[0])
    for i, b in enumerate(batches[1:], 1):
        if _shapes(b) != shapes0:
            raise user_error(f"{calib}: call {i} has input shapes {_shapes(b)} but call 0 has {shapes0}",
                             "record calls of one shape (same resolution, frames and batch size): the model is "
                             "captured at static shapes")
    try:
        with torch.no_grad():
            ReturnTensor(model)(**batches[0])
    except Exception as e:  # noqa: BLE001 - the model rejects the recorded inputs
        raise user_error(f"{calib} does not fit {cls}: calling it on the recorded inputs {shapes0} failed with "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                         "record calibration inputs from this model's pipeline") from None


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _shapes(batch: dict[str, Any]) -> dict[str, Any]:
    def s(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return tuple(v.shape)
        if isinstance(v, (tuple, list)):
            return [s(x) for x in v]
        if isinstance(v, dict):
            return {k: s(x) for k, x in v.items()}
        return v

    return {k: s(v) for k, v in batch.items()}


def _to(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device=device, dtype=dtype if batch.is_floating_point() else batch.dtype)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device, dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device, dtype) for k, v in batch.items()}
    return batch


# --------------------------------------------------------------------------------------- sizes
def plan_weight_bytes(plan: Plan, other_params: int = 0, fp_bytes: int = 2) -> int:
    """Estimated checkpoint bytes: quantized weights at their bits plus one 16-bit scale and zero
    per output row, low-rank factors and full-precision tensors at ``fp_bytes`` each."""
    total = other_params * fp_bytes
    for s in plan.layers.values():
        n, k = s.out_features, s.in_features
        if s.weight_bits:
            total += (n * k * s.weight_bits + 7) // 8 + 2 * n * 2
        else:
            total += n * k * fp_bytes
        total += s.rank * (n + k) * fp_bytes + n * fp_bytes  # low-rank factors, bias
    return total


def size_budget_plan(plan: Plan, budget_bytes: float, other_params: int, config: QuantConfig) -> Plan:
    """Bits per quantized layer re-allocated from the plan's sensitivities so that
    :func:`plan_weight_bytes` stays within ``budget_bytes`` (greedy marginal analysis)."""
    from lsgq_compiler.passes.bit_allocation import allocate_bits

    from .fidelity import sensitivity_order

    p = Plan.from_dict(plan.to_dict())
    q = {k: p.layers[k] for k in sensitivity_order(p) if p.layers[k].weight_bits}
    fixed = plan_weight_bytes(Plan(layers={k: s for k, s in p.layers.items() if k not in q}), other_params)
    quant_params = sum(s.in_features * s.out_features for s in q.values())
    per_layer_fixed = sum(2 * s.out_features * 2 + s.rank * (s.in_features + s.out_features) * 2 + 2 * s.out_features
                          for s in q.values())
    if not q:
        return p
    bits = (budget_bytes - fixed - per_layer_fixed) * 8 / quant_params
    allowed = tuple(sorted(b for b in config.allowed_bits if b <= 8))
    if bits < allowed[0]:
        smallest = fixed + per_layer_fixed + quant_params * allowed[0] / 8
        raise user_error(f"--size-budget {budget_bytes / 1e9:g} GB is below the smallest checkpoint at "
                         f"{allowed[0]}-bit weights, about {smallest / 1e9:.4g} GB",
                         "raise --size-budget, or keep fewer layers in full precision")
    alloc = allocate_bits({k: max(float(s.sensitivity), 0.0) for k, s in q.items()},
                          {k: s.in_features * s.out_features for k, s in q.items()}, allowed, bits,
                          {k: config.weight_bits for k in q})
    for k, s in q.items():
        s.weight_bits = alloc[k]
        if s.act_bits is not None:
            s.act_bits = max(alloc[k], config.act_bits) if config.act_bits > config.weight_bits else alloc[k]
    return p


# --------------------------------------------------------------------------------------- compiles
class Compiler:
    """``compile_quantized`` on the calibration batches, memoised in the stage folder.

    Each result is stored as ``compile-<key>.safetensors``: the QuantLinears' tensors
    (``qm.quant_state_dict()``), with the resulting plan and the measured SQNR as metadata. A
    stored result is restored by re-applying its plan without training (time budget ~0) and
    loading the tensors back, which reproduces the compile exactly.
    """

    def __init__(self, model: nn.Module, calib: list[dict], held: list[dict], ref: list[torch.Tensor],
                 config: QuantConfig, stages: Path, job_key: str, progress: bool) -> None:
        self.model, self.calib, self.held, self.ref = model, calib, held, ref
        self.config, self.stages, self.job_key, self.progress = config, stages, job_key, progress
        self.compiles = self.restored = 0

    def _key(self, plan: Plan | None) -> str:
        text = self.job_key + (plan.to_json() if plan is not None else "base")
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def measure(self, qm: nn.Module) -> float:
        from .calibration import run_batches

        db = sqnr_db(self.ref, run_batches(qm, [((), b) for b in self.held], desc="held-back batches", progress=False))
        return distributed.broadcast_object(db)  # under torchrun: rank 0's, so every rank takes the same next step

    def __call__(self, plan: Plan | None) -> tuple[Any, float]:
        from safetensors.torch import load_file, save_file

        from .api import compile_quantized

        path = self.stages / f"compile-{self._key(plan)}.safetensors"
        if distributed.broadcast_object(path.is_file()):  # under torchrun: rank 0 writes, every rank reads
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
            state = load_file(str(path), device=str(self.ref[0].device))
            saved = Plan.from_json(meta["plan"])
            fast = dataclasses.replace(self.config, time_budget_s=1e-9)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qm = compile_quantized(self.model, self.calib[0], fast, calib_data=self.calib, plan=saved,
                                       quant_state=state, progress=False)
            for p, m in qm.quant_linears().items():
                ref = saved.layers.get(p)
                if ref is not None:
                    for f_ in dataclasses.fields(ref):
                        setattr(m.spec, f_.name, getattr(ref, f_.name))
                m._wcache = None
            qm.config, qm.plan, qm.plan.config = self.config, saved, saved.config
            qm.info["timings"] = json.loads(meta.get("timings", "{}"))
            self.restored += 1
            return qm, float(meta["sqnr_db"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qm = compile_quantized(self.model, self.calib[0], self.config, calib_data=self.calib, plan=plan,
                                   progress=self.progress)
        db = self.measure(qm)
        self.compiles += 1
        if not distributed.is_main():
            return qm, db
        state = {k: v.detach().to("cpu").contiguous() for k, v in qm.quant_state_dict().items()}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"plan": qm.plan.to_json(), "sqnr_db": repr(db),
                                             "timings": json.dumps(qm.info.get("timings", {}))})
        os.replace(tmp, path)
        return qm, db


# --------------------------------------------------------------------------------------- checkpoint
def canonicalize_safetensors(path: Path) -> bool:
    """Sort the ``__metadata__`` keys of a safetensors file's header, in place.

    safetensors (0.8) writes ``__metadata__`` in hash-map order, which changes from one save to
    the next: two saves of the same tensors and metadata differ in bytes whenever the metadata
    has two keys or more. Sorting them (same header length: only the order changes) makes
    checkpoint bytes reproducible. Returns False (file untouched) if the header would change length.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        head = json.loads(raw)
        meta = head.get("__metadata__")
        if not isinstance(meta, dict) or len(meta) < 2:
            return True
        head["__metadata__"] = dict(sorted(meta.items()))
        head = {"__metadata__": head.pop("__metadata__"), **head}
        new = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) != len(raw.rstrip(b" ")):  # not a pure reordering (e.g. other escaping): leave it
            return False
        f.seek(8)
        f.write(new + b" " * (n - len(new)))
    return True


def save_checkpoint(qm: Any, folder: Path, model: nn.Module) -> str:
    """Write the deploy checkpoint to ``folder`` (replaced atomically); returns the format name."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        import lsgq_compiler

        save = getattr(lsgq_compiler, "save_pretrained", None)
        if save is not None:
            save(qm, tmp, model=model)
            kind = "lsgq deploy checkpoint (lsgq_compiler.from_pretrained)"
        else:  # the deploy module is not in this install yet: the artifact format
            from .backends.artifacts import save_quantized

            save_quantized(qm, tmp, model=model)
            kind = "lsgq artifact (lsgq_compiler.load_quantized; needs the base model)"
            for p in sorted(tmp.rglob("*.safetensors")):  # (its checksums are per tensor, not per file)
                canonicalize_safetensors(p)
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return kind


def verify_checkpoint(folder: Path, device: torch.device, batches: list[dict], ref: list[torch.Tensor],
                      qm_out: list[torch.Tensor]) -> dict[str, float] | None:
    """Load ``folder`` with :func:`lsgq_compiler.from_pretrained` and run the held-back ``batches``:
    pooled SQNR of its outputs against full precision and against the compiled model (None
    without the deploy module)."""
    import lsgq_compiler

    load = getattr(lsgq_compiler, "from_pretrained", None)
    if load is None:
        return None
    from .capture import ReturnTensor

    m = ReturnTensor(load(str(folder), device=str(device)))
    with torch.no_grad():
        out = [m(**b) for b in batches]
    return {"sqnr_vs_fp_db": sqnr_db(ref, out), "sqnr_vs_compiled_db": sqnr_db(qm_out, out)}


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------- the run
@contextmanager
def _stage(name: str, log: list[dict], device: torch.device, bar: Any) -> Iterator[dict]:
    row: dict[str, Any] = {"stage": name}
    if bar is not None:
        bar.set_description(f"lsgq quantize: {name}")
    t0 = time.perf_counter()
    with _PeakRSS(device) as mem:
        yield row
    row["time_s"] = round(time.perf_counter() - t0, 3)
    row["peak_rss_gib"] = round(mem.peak / 2**30, 3)
    if mem.gpu_peak is not None:
        row["peak_gpu_gib"] = round(mem.gpu_peak / 2**30, 3)
    log.append(row)
    if bar is not None:
        bar.update(1)
    _stage_done(name)


def _load_builtin_calibration(vsr: Any) -> list[dict]:
    from .vsr.data import calibration_set
    from .vsr.evaluate import DEFAULT_FRAMES, TILE
    from .vsr.tiling import to_tensor

    clips = calibration_set(frames=DEFAULT_FRAMES, size=(TILE * 4, TILE * 4))
    return [vsr.transformer_inputs(to_tensor(c.lq)) for c in clips]


def run_quantize(job: QuantizeJob, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Run every stage of ``job``; returns the summary (also written to ``OUT/report/summary.json``)."""
    from tqdm.auto import tqdm

    from .fidelity import raise_until_floor
    from .record import load_inputs, read_record

    if job.size_budget_gb is not None and job.size_budget_gb <= 0:
        raise user_error(f"--size-budget {job.size_budget_gb} must be positive (GB)", "e.g. --size-budget 3.2")
    if not 0 < job.holdout < 1:
        raise user_error(f"--holdout {job.holdout} must be between 0 and 1", "e.g. 0.25 (the last quarter)")
    config = make_config(job)
    check_target(job.target)
    device = torch.device(job.device) if job.device else best_device()
    out = Path(job.out)
    stages = out / STAGES_DIR
    n_stages = 5 + (job.size_budget_gb is not None) + (job.min_fidelity_db is not None)
    bar = tqdm(total=n_stages, desc="lsgq quantize", disable=not job.progress, leave=False)
    log: list[dict] = []
    t_start = time.perf_counter()
    try:
        # 1. load ----------------------------------------------------------------------------
        with _stage("load", log, device, bar) as row:
            if job.model == TINY_VSR:
                from .vsr.models import load_tiny_vsr

                n_params = sum(p.numel() for p in load_tiny_vsr().transformer.parameters())
                row["memory_estimate_gib"] = round(check_memory(n_params, dtype, device) / 2**30, 3)
                vsr = load_tiny_vsr(dtype=dtype)
                model = vsr.transformer.to(device).eval()
                model_id, model_desc = "tiny-vsr:" + str(n_params), "the shipped TinyVSR transformer"
            else:
                folder = Path(job.model)
                cls = model_class_from_folder(folder)
                n_params = count_parameters(cls, folder)
                row["memory_estimate_gib"] = round(check_memory(n_params, dtype, device) / 2**30, 3)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True,
                                                use_safetensors=True)
                model = model.to(device).eval()
                model_id, model_desc = _folder_id(folder), f"{folder} ({cls.__name__})"
        # 2. calibration ---------------------------------------------------------------------
        with _stage("calibration", log, device, bar) as row:
            if job.calib is None:
                if job.model != TINY_VSR:
                    raise user_error("--calib is required for a model folder",
                                     "record inputs from your pipeline with lsgq_compiler.record_inputs (README: "
                                     "'Quantize your own model') and pass the file")
                batches = _load_builtin_calibration(vsr)
                meta = {"model_class": type(model).__name__}
                calib_id, calib_desc = "builtin", "the built-in calibration clips (8 clips, 8 frames, 32x32 LQ)"
            else:
                meta, _ = read_record(job.calib)
                batches = load_inputs(job.calib)
                calib_id, calib_desc = file_sha256(Path(job.calib)), str(job.calib)
            batches = [_to(b, device, dtype) for b in batches]
            check_calibration(meta, batches, model, job.calib or "the built-in calibration set")
            n = len(batches)
            n_held = max(1, round(n * job.holdout)) if n >= 2 else 0
            calib, held = (batches[: n - n_held], batches[n - n_held:]) if n_held else (batches, batches)
            from .capture import ReturnTensor

            with torch.no_grad():
                ref = [ReturnTensor(model)(**b).detach() for b in held]
            row["batches"] = f"{len(calib)} calibration + {n_held} held back"
        key = job.fingerprint(model_id, calib_id)
        stages.mkdir(parents=True, exist_ok=True)
        job_file = stages / "job.json"
        main = distributed.is_main()  # under torchrun only rank 0 writes; the others follow its decisions
        if job.restart and main:
            for p in stages.glob("compile-*"):
                p.unlink()
        if distributed.broadcast_object(job_file.is_file() and json.loads(job_file.read_text()).get("key") != key
                                        and not job.restart):
            raise user_error(f"{out} holds an unfinished run with other arguments (model, calibration or options)",
                             "use another --out, or pass --restart to discard that run")
        if main:
            atomic_write_text(job_file, json.dumps({"key": key, "job": dataclasses.asdict(job)}, indent=1,
                                                   default=str))
        comp = Compiler(model, calib, held, ref, config, stages, key, job.progress)
        # 3. compile -------------------------------------------------------------------------
        with _stage("compile", log, device, bar) as row:
            qm, db = comp(None)
            row["sqnr_db"] = round(db, 3)
        other = n_params - sum(s.in_features * s.out_features + s.out_features for s in qm.plan.layers.values())
        base_db, base_plan = db, qm.plan
        # 4. size budget ---------------------------------------------------------------------
        if job.size_budget_gb is not None:
            with _stage("size budget", log, device, bar) as row:
                p = size_budget_plan(qm.plan, job.size_budget_gb * 1e9, other, config)
                if p.to_json() != qm.plan.to_json():
                    qm, db = comp(p)
                row["sqnr_db"] = round(db, 3)
            base_db, base_plan = db, qm.plan
        # 5. fidelity floor ------------------------------------------------------------------
        floor = None
        if job.min_fidelity_db is not None:
            with _stage("fidelity floor", log, device, bar) as row:
                results: dict[str, Any] = {}

                def measure(p: Plan) -> float:
                    key_ = p.to_json()
                    if key_ == qm.plan.to_json():
                        results[key_] = (qm, db)
                    if key_ not in results:
                        results[key_] = comp(p)
                    return results[key_][1]

                floor = raise_until_floor(qm.plan, measure, float(job.min_fidelity_db))
                qm, db = results[floor.plan.to_json()]
                row["rounds"] = len(floor.rounds)
                row["sqnr_db"] = round(db, 3)
            if not floor.met:
                raise user_error(f"the fidelity floor {job.min_fidelity_db} dB is out of reach: {db:.2f} dB with every "
                                 "quantized layer in full precision (other quantized parts, e.g. 8-bit attention, "
                                 "limit it)", "lower --min-fidelity-db, or drop --attention-bits")
        if not main:  # the other ranks took part in the compiles; rank 0 saves, verifies and reports
            return {"rank": distributed.world()[0], "sqnr_db": db}
        # 6. save + verify -------------------------------------------------------------------
        ckpt = out / "checkpoint"
        with _stage("save", log, device, bar) as row:
            kind = save_checkpoint(qm, ckpt, model)
            row["checkpoint_bytes"] = _dir_bytes(ckpt)
        with _stage("verify", log, device, bar) as row:
            from .calibration import run_batches

            qm_out = run_batches(qm, [((), b) for b in held], progress=False)
            verified = verify_checkpoint(ckpt, device, held, ref, qm_out)
            if verified:
                row.update({k: round(v, 3) for k, v in verified.items()})
        # 7. report --------------------------------------------------------------------------
        with _stage("report", log, device, bar):
            summary = {
                "model": model_desc, "model_class": type(model).__name__, "parameters": n_params,
                "calibration": calib_desc, "calibration_batches": len(calib), "held_back_batches": n_held,
                "input_shapes": _shapes(held[0]), "config": config.to_dict(), "target": job.target,
                "device": str(device), "checkpoint": str(ckpt), "checkpoint_format": kind,
                "checkpoint_bytes": _dir_bytes(ckpt), "estimated_bytes": plan_weight_bytes(qm.plan, other),
                "sqnr_db": db, "base_sqnr_db": base_db, "formats": qm.plan.summary()["formats"],
                "avg_weight_bits": qm.plan.summary()["avg_weight_bits"],
                "size_budget_gb": job.size_budget_gb, "min_fidelity_db": job.min_fidelity_db,
                "floor": None if floor is None else {"met": floor.met, "raised": floor.raised,
                                                     "rounds": floor.rounds},
                "verify": verified, "compiles": comp.compiles, "restored_compiles": comp.restored,
                "stages": log,
            }
            _write_report(out / "report", qm.plan, base_plan, summary)
        summary["total_s"] = round(time.perf_counter() - t_start, 3)
        atomic_write_text(out / "report" / "summary.json", json.dumps(summary, indent=1, default=_json_default))
        shutil.rmtree(stages, ignore_errors=True)
        return summary
    finally:
        bar.close()


def _json_default(v: Any) -> Any:
    if isinstance(v, float):
        return None
    return str(v)


def _fmt_db(v: float | None) -> str:
    return "-" if v is None else ("exact" if v == float("inf") else f"{v:.2f} dB")


def summary_markdown(s: dict[str, Any]) -> str:
    """The report's ``summary.md``."""
    c = s["config"]
    lines = [f"# lsgq quantize: {s['model_class']}", "",
             f"- model: {s['model']}, {s['parameters'] / 1e6:.2f} M parameters",
             f"- recipe {c['recipe']}, W{c['weight_bits']}A{c['act_bits']}, target {s['target']}, on {s['device']}",
             f"- calibration: {s['calibration']}: {s['calibration_batches']} batches for calibration, "
             f"{s['held_back_batches']} held back for fidelity; inputs {s['input_shapes']}",
             f"- checkpoint: `{s['checkpoint']}` ({s['checkpoint_format']}), {s['checkpoint_bytes'] / 1e6:.3f} MB "
             f"on disk",
             f"- **fidelity: model-output SQNR {_fmt_db(s['sqnr_db'])}** on the held-back batches "
             f"(vs full precision)" + ("" if s["held_back_batches"] else
                                      " (only one batch: measured on the calibration batch itself)"),
             f"- formats: {', '.join(f'{k} x{v}' for k, v in sorted(s['formats'].items()))}; average weight bits "
             f"{s['avg_weight_bits']}"]
    if s.get("verify"):
        v = s["verify"]
        lines.append(f"- checkpoint loaded back (from_pretrained), on the held-back batches: "
                     f"{_fmt_db(v['sqnr_vs_fp_db'])} vs full precision, {_fmt_db(v['sqnr_vs_compiled_db'])} vs the "
                     "compiled model")
    if s.get("size_budget_gb") is not None:
        lines.append(f"- size budget {s['size_budget_gb']:g} GB (estimated {s['estimated_bytes'] / 1e9:.4g} GB, "
                     f"16-bit full-precision tensors)")
    fl = s.get("floor")
    if fl is not None:
        lines += ["", f"## Fidelity floor {s['min_fidelity_db']:g} dB", "",
                  f"Starting formats measured {_fmt_db(s['base_sqnr_db'])}; "
                  + ("that meets the floor: nothing raised." if not fl["raised"] else
                     f"{len(fl['raised'])} layers raised, most sensitive first, until the floor held "
                     f"({_fmt_db(s['sqnr_db'])}, measured)."), ""]
        if fl["raised"]:
            lines += ["| layer | sensitivity rank | sensitivity | from | to |", "|---|---|---|---|---|"]
            lines += [f"| {r['layer']} | {r['rank']} | {r['sensitivity']:.4g} | {r['from']} | {r['to']} |"
                      for r in fl["raised"]]
            lines.append("")
        lines += ["Measured candidates (top-k most sensitive layers raised):", "",
                  "| round | phase | k | SQNR | meets floor |", "|---|---|---|---|---|"]
        lines += [f"| {i} | {r['phase']} | {r['k']} | {r['sqnr_db']:.2f} dB | {'yes' if r['passed'] else 'no'} |"
                  for i, r in enumerate(fl["rounds"], 1)]
    lines += ["", "## Stages", "", "| stage | time (s) | peak RSS (GiB) | peak GPU (GiB) |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['time_s']:.2f} | {r['peak_rss_gib']:.2f} | "
              f"{r['peak_gpu_gib'] if 'peak_gpu_gib' in r else '-'} |" for r in s["stages"]]
    lines += ["", f"{s['compiles']} compiles run, {s['restored_compiles']} restored from an interrupted run.", "",
              "Files: `plan.json` (the per-layer plan, re-applicable with `compile_quantized(..., plan=...)`), "
              "`plan.png` (per-layer sensitivity, VOLTS tier and bits), `summary.json`."]
    return "\n".join(lines) + "\n"


def _write_report(folder: Path, plan: Plan, base_plan: Plan, summary: dict[str, Any]) -> None:
    from .report import plot_plan

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "plan.json", plan.to_json())
    shown = Plan.from_dict(plan.to_dict())  # sensitivities as ranked (at the starting formats), bits as chosen
    for k, s in shown.layers.items():
        if k in base_plan.layers and base_plan.layers[k].sensitivity is not None:
            s.sensitivity = base_plan.layers[k].sensitivity
    plot_plan(shown, folder / "plan.png", title=f"{summary['model_class']}: sensitivity (at the starting formats), "
              "tier and bits per layer")
    atomic_write_text(folder / "summary.md", summary_markdown(summary))


# --------------------------------------------------------------------------------------- CLI
def add_quantize_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``lsgq quantize`` on the ``lsgq`` sub-command parser."""
    q = sub.add_parser("quantize", help="quantize your own diffusers transformer folder into a deploy checkpoint",
                       description="Quantize a diffusers transformer folder on calibration inputs recorded from "
                                   "your pipeline (lsgq_compiler.record_inputs); writes OUT/checkpoint and "
                                   "OUT/report. Interrupted runs resume from OUT.")
    q.add_argument("--model", required=True, help=f"a diffusers model folder (with config.json), or {TINY_VSR}")
    q.add_argument("--calib", help="calibration inputs (.safetensors from record_inputs); optional for tiny-vsr")
    q.add_argument("--recipe", default="lsgquant", help="quantization recipe (`lsgq recipes`), default lsgquant")
    q.add_argument("--bits", default="w4a4", help="weight/activation bits, e.g. w4a4 (default), w4a8, w8a8")
    q.add_argument("--target", default="sim", help=f"deploy target: {', '.join(KNOWN_TARGETS)} (default sim)")
    q.add_argument("--out", required=True, help="output folder: checkpoint/, report/ (and stage checkpoints)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--size-budget", type=float, metavar="GB", help="largest checkpoint size in GB (1e9 bytes)")
    g.add_argument("--min-fidelity-db", type=float, metavar="X",
                   help="smallest model-output SQNR (dB) on held-back batches: raise sensitive layers until met")
    q.add_argument("--holdout", type=float, default=0.25, help="share of calibration batches held back (0.25)")
    q.add_argument("--attention-bits", type=int, choices=(8,), help="8: 8-bit attention where it measures well")
    q.add_argument("--options", default="{}", help="recipe options as JSON, e.g. '{\"full_iters\": 50}'")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", help="cpu, cuda, cuda:1 (default: a GPU when present)")
    q.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype (float32)")
    q.add_argument("--restart", action="store_true", help="discard an unfinished run in OUT and start again")
    q.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars (default: when stderr is a terminal)")
    q.add_argument("--no-progress", dest="progress", action="store_false")
    q.set_defaults(fn=_cmd_quantize)
    return q


def _cmd_quantize(args: argparse.Namespace) -> int:
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as e:
        raise user_error(f"--options is not JSON ({e})", "e.g. --options '{\"full_iters\": 50}'") from None
    if not isinstance(options, dict):
        raise user_error("--options must be a JSON object", "e.g. --options '{\"full_iters\": 50}'")
    job = QuantizeJob(model=args.model, out=args.out, calib=args.calib, recipe=args.recipe, bits=args.bits,
                      target=args.target, size_budget_gb=args.size_budget, min_fidelity_db=args.min_fidelity_db,
                      holdout=args.holdout, options=options, attention_bits=args.attention_bits, seed=args.seed,
                      device=args.device, restart=args.restart,
                      progress=sys.stderr.isatty() if args.progress is None else args.progress)
    with distributed.from_env(args.device):  # torchrun --nproc-per-node N -m lsgq_compiler.cli quantize ...
        if not distributed.is_main():
            job = dataclasses.replace(job, progress=False)
        s = run_quantize(job, dtype=getattr(torch, args.dtype))
    if "checkpoint" not in s:  # not rank 0
        return 0
    print(f"wrote {s['checkpoint']} ({s['checkpoint_bytes'] / 1e6:.3f} MB, model-output SQNR {_fmt_db(s['sqnr_db'])} "
          f"on {s['held_back_batches']} held-back batches) and {Path(args.out) / 'report'}/summary.md")
    return 0
