"""8-bit attention for x86 CPUs, and its onnxruntime custom op.

The kernel (``cpu_attention.cpp``): INT8 ``Q K^T`` on AVX-512 VNNI, online softmax and
``P V`` in fp32, one pass over the keys per block of query rows. On a CPU without AVX-512
VNNI (or head dims other than 64 and 128) a portable C++ path with the same numerics runs.

Shapes: ``q: (B, Nq, H*D)``, ``k, v: (B, Nk, H*D)`` -> ``(B, Nq, H*D)``, float32: the layout
of onnxruntime's ``com.microsoft.MultiHeadAttention``, which the op replaces.

Numerics (:func:`cpu_int8_attention_reference` computes them with numpy):

- K smoothed (token mean subtracted per head and channel: exact before quantization, softmax
  is invariant to ``q . mean(K)``), int8 symmetric per block of 64 keys.
- Q times ``scale * log2(e)``, int8 symmetric per row.
- Scores exact in int32, softmax in base 2 with a running row max, ``P V`` in fp32.

The library is compiled on first use with the system's C++ compiler (``$CXX`` or ``g++``) into
a cache folder (``$LSGQ_CACHE_DIR``, default ``~/.cache/lsgq_compiler``), keyed by the source's
hash, and written under a temporary name then renamed. The sha256 of the library built is
recorded beside it (``.so.sha256``) and checked before every load; a library that does not
match is rebuilt, never loaded.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from lsgq_compiler.errors import user_error
from lsgq_compiler.fsutil import atomic_path, atomic_write_text, file_sha256

SOURCE = Path(__file__).with_name("cpu_attention.cpp")
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread"]
#: the onnxruntime custom op the library registers: domain and type of the node
#: :mod:`lsgq_compiler.backends.onnx` writes (inputs and attributes as ``com.microsoft.MultiHeadAttention``)
ORT_DOMAIN, ORT_OP = "com.lsgq", "Int8Attention"
KEY_BLOCK = 64
MODES = {"auto": 0, "portable": 1, "online": 2}

_lib: ctypes.CDLL | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("LSGQ_CACHE_DIR", Path.home() / ".cache" / "lsgq_compiler"))




def _verified(out: Path) -> bool:
    """True when ``out`` exists and its sha256 equals the one recorded when it was built
    (``out.sha256``, written after the library): a library we did not build, or one changed
    since, is rebuilt instead of loaded."""
    side = out.with_name(out.name + ".sha256")
    try:
        return out.is_file() and side.read_text().strip() == file_sha256(out)
    except OSError:
        return False


def build(force: bool = False) -> Path:
    """Compile the kernel library (once per source version) and return its path.

    The cached library is loaded only if its sha256 matches the sidecar ``.sha256`` recorded
    when this code built it; otherwise (missing, truncated, replaced) it is rebuilt.
    """
    cxx = os.environ.get("CXX", "g++")
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + " ".join([cxx, *FLAGS]).encode()).hexdigest()[:16]
    out = cache_dir() / f"lsgq_cpu_attention_{tag}.so"
    if not force and _verified(out):
        return out
    if shutil.which(cxx) is None:
        raise user_error(f"the CPU attention kernel needs a C++ compiler and {cxx!r} was not found",
                         "install g++ (Debian/Ubuntu: apt install g++) or set CXX to a C++17 compiler")
    with atomic_path(out) as tmp:
        res = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            raise user_error(f"compiling {SOURCE.name} failed:\n{res.stderr[-2000:]}",
                             "check that the compiler supports C++17 and x86 intrinsics (g++ >= 9)", RuntimeError)
        digest = file_sha256(tmp)
    atomic_write_text(out.with_name(out.name + ".sha256"), digest + "\n")
    if not _verified(out):  # another process replaced it between our two renames: use our own check
        raise user_error(f"the kernel library {out} changed while it was being built",
                         "run again (concurrent first uses race here), or set LSGQ_CACHE_DIR to a private folder",
                         RuntimeError)
    return out


def library() -> ctypes.CDLL:
    """The loaded kernel library (built on first use)."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(build()))
        fp = ctypes.POINTER(ctypes.c_float)
        lib.lsgq_int8_attention.argtypes = [fp, fp, fp, fp] + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_int,
                                                                                    ctypes.c_int]
        lib.lsgq_int8_attention.restype = ctypes.c_int
        lib.lsgq_cpu_attention_fast_path.restype = ctypes.c_int
        _lib = lib
    return _lib


def fast_path() -> bool:
    """True when this CPU runs the AVX-512 VNNI path (else the portable one)."""
    return bool(library().lsgq_cpu_attention_fast_path())


def _f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise user_error(f"{name} is {x.dtype}; the CPU 8-bit attention takes float32", f"cast {name} to float32")
    if x.ndim != 3:
        raise user_error(f"{name} has shape {x.shape}; expected (batch, tokens, heads * head_dim)",
                         "reshape (B, H, N, D) tensors to (B, N, H * D)")
    return np.ascontiguousarray(x)


def cpu_int8_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: float | None = None,
                       threads: int = 0, mode: str = "auto") -> np.ndarray:
    """8-bit attention on the CPU.

    Args:
        q: ``(B, Nq, H*D)`` float32.
        k, v: ``(B, Nk, H*D)`` float32.
        heads: ``H``.
        scale: softmax scale (default ``D ** -0.5``).
        threads: worker threads (0: one per core).
        mode: ``"auto"`` (AVX-512 VNNI where the CPU has it, fixed row max where the bound
            allows), ``"portable"`` (the plain C++ path) or ``"online"`` (AVX-512, running
            row max only); the last two are for tests and benchmarks.
    Returns:
        ``(B, Nq, H*D)`` float32.
    """
    if mode not in MODES:
        raise user_error(f"mode={mode!r} is not a CPU attention mode", f"use one of {tuple(MODES)}")
    q, k, v = _f32(q, "q"), _f32(k, "k"), _f32(v, "v")
    b, nq, hd = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2] != hd:
        raise user_error(f"q {q.shape}, k {k.shape}, v {v.shape} do not match",
                         "k and v must be (B, Nk, H*D) with q's B and H*D")
    if heads <= 0 or hd % heads or (hd // heads) % 4 or hd // heads > 128:
        raise user_error(f"{hd} channels do not split into {heads} heads with a head dim divisible by 4 and "
                         "at most 128",
                         "pass the model's number of heads")
    d = hd // heads
    out = np.empty_like(q)
    fp = ctypes.POINTER(ctypes.c_float)
    rc = library().lsgq_int8_attention(q.ctypes.data_as(fp), k.ctypes.data_as(fp), v.ctypes.data_as(fp),
                                       out.ctypes.data_as(fp), b, nq, k.shape[1], heads, d,
                                       float(d ** -0.5 if scale is None else scale), int(threads), MODES[mode])
    if rc != 0:
        raise user_error(f"the CPU attention kernel refused its inputs (code {rc})", "check shapes and sizes",
                         RuntimeError)
    return out


def cpu_int8_attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int,
                                 scale: float | None = None) -> np.ndarray:
    """The kernel's numerics in numpy (float64 softmax; for tests). Shapes as :func:`cpu_int8_attention`."""
    b, nq, hd = q.shape
    d = hd // heads
    scale = d ** -0.5 if scale is None else scale
    qh = q.reshape(b, nq, heads, d).transpose(0, 2, 1, 3).astype(np.float32) * np.float32(scale * np.log2(np.e))
    kh = k.reshape(b, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64)
    vh = v.reshape(b, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64)
    nk = kh.shape[2]
    kc = (kh - kh.mean(axis=2, keepdims=True)).astype(np.float32)
    sq = np.maximum(np.abs(qh).max(-1, keepdims=True), 1e-30) / 127
    qi = np.clip(np.rint(qh / sq), -127, 127)
    nb = -(-nk // KEY_BLOCK)
    pad = nb * KEY_BLOCK - nk
    kp = np.pad(kc, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, heads, nb, KEY_BLOCK, d)
    sk = np.maximum(np.abs(kp).max(axis=(-2, -1), keepdims=True), 1e-8) / 127
    ki = np.clip(np.rint(kp / sk), -127, 127)
    kdq = (ki * sk).reshape(b, heads, nb * KEY_BLOCK, d)[:, :, :nk]
    s = (qi * sq).astype(np.float64) @ kdq.astype(np.float64).transpose(0, 1, 3, 2)
    p = np.exp2(s - s.max(-1, keepdims=True))
    o = (p @ vh) / p.sum(-1, keepdims=True)
    return o.transpose(0, 2, 1, 3).reshape(b, nq, hd).astype(np.float32)


def ort_library() -> str:
    """Path of the kernel library for ``SessionOptions.register_custom_ops_library`` (it adds
    ``com.lsgq::Int8Attention``; built on first use)."""
    return str(build())
