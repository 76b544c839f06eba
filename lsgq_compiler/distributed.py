"""Calibration and QAO across processes, on ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Under an initialised default process group of two or more processes (``torchrun``, or
``init_process_group`` before :func:`~lsgq_compiler.compile_quantized`), the two passes that
dominate a compile split their work and merge it exactly: every rank ends with the tensors and
the plan one process computes, bit for bit (on CPUs; on GPUs of one model with deterministic
algorithms on). Every other pass runs replicated, the same on every rank. Without a process
group (or with one process) nothing here communicates and the passes run as they always did.

- **Calibration, data parallel** (:class:`~lsgq_compiler.passes.observe.Observe`): each rank runs
  a contiguous block of the calibration clips (:func:`clip_shard`) and records each layer's
  statistics per call (:class:`ShardStats`); :func:`merge_observed` merges them: max/min by
  all-reduce, sums re-added call by call in clip order from the gathered per-call parts (a
  floating-point sum depends on its order: an all-reduce would not match one process), token
  samples drawn with the *global* call index as seed, the gradient-probe terms of the
  sensitivity scores re-added in clip order too. Every rank then holds all of it.
- **QAO, layer parallel** (:class:`~lsgq_compiler.passes.qao.QAO`): each linear trains against
  its own cached full-precision inputs, so layers are independent. A shared iteration budget
  (``qao_iters``) is handed out in waves of layers whose allotment is known before any of them
  trains (:func:`budget_wave`); each wave is split by largest-first bin packing on the estimated
  cost ``iterations x tokens x in x out`` (:func:`assign_layers`); a rank builds training state
  only for its own layers; results go to every rank (:func:`gather_objects`) and each trained
  layer's tensors from its owner (:func:`broadcast_tensors_`, ``dist.broadcast``).

Collectives must be called in the same order on every rank: each function here is called by
all ranks, with arguments every rank computes identically.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from .errors import user_error
from .qlinear import InputStats

__all__ = ["world", "active", "is_main", "comm_device", "from_env", "clip_shard", "assign_layers", "budget_wave",
           "broadcast_object", "gather_objects", "check_same", "fail_together", "broadcast_tensors_",
           "broadcast_tensor_list", "fingerprint", "check_job", "ShardStats", "merge_observed"]

_ALIGN = 16  # bytes: every packed tensor starts on this boundary, so byte slices view as any dtype


# ------------------------------------------------------------------------------------- the group
def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    """Whether a process group of two or more ranks is initialised (the passes then split work)."""
    return world()[1] > 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes outputs and shows progress."""
    return world()[0] == 0


def comm_device() -> torch.device:
    """Where collectives take tensors: the current CUDA device under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def from_env(device: str | None = None) -> Iterator[bool]:
    """Initialise the default process group from ``torchrun``'s environment, for the command line.

    With ``WORLD_SIZE > 1`` and no group yet: NCCL with ``cuda:LOCAL_RANK`` as the current device
    when CUDA is present and ``device`` is not ``cpu``, else gloo (``env://`` rendezvous:
    ``MASTER_ADDR``/``MASTER_PORT``, set by torchrun). Destroys the group it created on exit.
    Yields whether two or more ranks take part.
    """
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield active()
        return
    cuda = torch.cuda.is_available() and not (device or "").startswith("cpu")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    try:
        yield active()
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------- deterministic splits
def clip_shard(n_clips: int, rank: int | None = None, size: int | None = None) -> range:
    """Global indices of the calibration clips ``rank`` observes: contiguous blocks in clip order
    (so the ranks' parts, taken in rank order, are in clip order), sizes differing by at most
    one (the first ``n_clips % size`` ranks take one more); empty for ranks beyond ``n_clips``.
    Default: this process's rank and world size."""
    if rank is None or size is None:
        rank, size = world()
    base, extra = divmod(n_clips, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def assign_layers(costs: dict[str, int], size: int | None = None) -> dict[str, int]:
    """Owner rank of each layer: largest-first bin packing on ``costs`` (ties by name), each layer
    to the least-loaded rank (ties: the lowest rank). Integer costs, so every rank computes the
    same assignment. A world larger than the number of layers leaves ranks without layers."""
    size = world()[1] if size is None else size
    load = [0] * size
    owner: dict[str, int] = {}
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        r = min(range(size), key=lambda i: (load[i], i))
        owner[name] = r
        load[r] += costs[name]
    return owner


def budget_wave(caps: Sequence[int], left: int | None, fixed: Sequence[bool]) -> list[int]:
    """Iterations of the next layers (in training order) whose share of a shared budget is known
    before any of them trains.

    One process gives layer ``i`` ``max(0, min(caps[i], left_i))`` iterations, ``left_i`` being
    the budget minus what the layers before it *used*; a layer trained to convergence may use
    less than its share (``fixed[i]`` False), so the layers after it wait for its result. Walking
    the layers with bounds on ``left_i`` (at most: all earlier shares used; at least: only the
    ``fixed`` ones), the wave is the longest run whose share is the same at both bounds; it
    holds at least one layer. ``left`` None (no shared budget): every layer its cap, one wave.
    Training the waves one after another gives each layer the iterations one process gives it.
    """
    if left is None:
        return [max(0, int(c)) for c in caps]
    lo = hi = int(left)  # bounds on what is left before the next layer
    out: list[int] = []
    for c, f in zip(caps, fixed):
        share, share_hi = max(0, min(int(c), lo)), max(0, min(int(c), hi))
        if share != share_hi:
            break
        out.append(share)
        lo -= share
        hi -= share if f else 0
    return out


# ----------------------------------------------------------------------------------- collectives
def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` (picklable), on every rank; ``obj`` itself without a group."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a group."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def check_same(value: Any, what: str) -> None:
    """Raise on every rank when the ranks' ``value`` (picklable, comparable) differ: they would
    otherwise compute different things and wait on each other's collectives."""
    values = gather_objects(value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise user_error(f"ranks {odd} differ from rank 0 in {what}",
                         "give every rank the same model, inputs, calibration data and config (on GPUs, "
                         "torch.use_deterministic_algorithms(True) and one GPU model)", RuntimeError)


def fail_together(error: BaseException | None, what: str) -> None:
    """Collective: when ``error`` is set on any rank, raise on every rank (the failing rank its own
    exception, the others a RuntimeError naming it) instead of leaving them waiting on the next
    collective. Without a group: raise ``error`` if set."""
    msgs = gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if bad:
        raise RuntimeError(f"{what} failed on rank {bad[0][0]}: {bad[0][1]}")


Meta = list[tuple[str, tuple[int, ...]]]  # (dtype name, shape) of each tensor of a packed list


def _meta(tensors: Sequence[torch.Tensor]) -> Meta:
    return [(str(t.dtype).removeprefix("torch."), tuple(t.shape)) for t in tensors]


def _spans(meta: Meta) -> tuple[list[tuple[int, int]], int]:
    spans, off = [], 0
    for dtype, shape in meta:
        n = torch.Size(shape).numel() * getattr(torch, dtype).itemsize
        spans.append((off, n))
        off += -(-n // _ALIGN) * _ALIGN
    return spans, off


def _pack(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors' bytes, each at a multiple of ``_ALIGN``, in one uint8 tensor on ``device``."""
    spans, total = _spans(_meta(tensors))
    buf = torch.zeros(total, dtype=torch.uint8, device=device)
    for t, (off, n) in zip(tensors, spans):
        buf[off:off + n] = t.detach().contiguous().reshape(-1).view(torch.uint8).to(device)
    return buf


def _unpack(buf: torch.Tensor, meta: Meta, device: torch.device | str) -> list[torch.Tensor]:
    spans, _ = _spans(meta)
    buf = buf.to(device)
    return [buf[off:off + n].view(getattr(torch, dtype)).reshape(shape).clone()
            for (dtype, shape), (off, n) in zip(meta, spans)]


def broadcast_tensors_(tensors: Sequence[torch.Tensor], src: int) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s, in place (one ``dist.broadcast``).

    Every rank passes tensors of the same shapes and dtypes (e.g. one layer's parameters)."""
    if not active() or not tensors:
        return
    meta, dev = _meta(tensors), comm_device()
    buf = _pack(tensors, dev) if world()[0] == src else torch.empty(_spans(meta)[1], dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src)
    if world()[0] != src:
        with torch.no_grad():
            for t, v in zip(tensors, _unpack(buf, meta, dev)):
                t.copy_(v)


def broadcast_tensor_list(tensors: Sequence[torch.Tensor] | None, src: int, meta: Meta,
                          device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Rank ``src``'s ``tensors`` (any shapes; ``meta`` their dtypes and shapes, known to every
    rank) on every rank: ``src`` gets its own list back, the others copies on ``device``."""
    if world()[0] == src:
        if tensors is None or _meta(tensors) != meta:
            raise RuntimeError("broadcast_tensor_list: the source's tensors do not match the agreed meta")
    if not active() or not meta:
        return list(tensors or [])
    dev = comm_device()
    buf = _pack(tensors, dev) if world()[0] == src else torch.empty(_spans(meta)[1], dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src)
    return list(tensors) if world()[0] == src else _unpack(buf, meta, device)


def fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 of the tensors' bytes (and dtypes and shapes): to check ranks hold the same data."""
    h = hashlib.sha256(repr(_meta(tensors)).encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_job(config: dict[str, Any], batches: Sequence[tuple[tuple, dict]], plan: str | None) -> dict[str, Any]:
    """Raise on every rank unless all ranks compile the same job: ``config`` (``QuantConfig.to_dict()``),
    the given plan (JSON or None) and the calibration batches (by :func:`fingerprint`; the model's
    weights are not hashed). Returns ``{"world_size", "backend"}`` for ``QuantizedModel.info``."""
    from .capture import tensor_leaves

    data = [fingerprint([t for _, t in tensor_leaves(args, kwargs)]) for args, kwargs in batches]
    check_same({"config": config, "plan": plan, "calibration": data},
               "the compile job (config, plan or calibration batches)")
    return {"world_size": world()[1], "backend": dist.get_backend()}


# ------------------------------------------------------------------------------ exact calibration
class _TermLog(dict):
    """``probe_sums`` of a :class:`ShardStats`: each key reads 0.0, so the hook's
    ``probe_sums[k] += term`` writes the term itself, which is logged (in call order) instead of
    summed; :func:`merge_observed` re-adds the ranks' terms in clip order, as one process sums."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__({k: 0.0 for k in keys})
        self.terms: dict[str, list[float]] = {k: [] for k in keys}

    def __getitem__(self, key: str) -> float:
        return 0.0

    def __setitem__(self, key: str, value: float) -> None:
        self.terms[key].append(float(value))


class ShardStats(InputStats):
    """One rank's :class:`~lsgq_compiler.qlinear.InputStats` of one layer, kept per call so that
    the ranks' parts merge into exactly what one process records (:func:`merge_observed`).

    Before each clip :meth:`begin_clip` gives the global index of the layer's first call in it
    (clip index x calls per clip); ``samples`` is padded with ``None`` up to that index, so the
    token sample is seeded by the global call index, as in one process. ``call_sums`` /
    ``call_sumsqs``: ``(K,)`` float64 of each call (the sums ``update`` adds: it adds them to
    zeros, and ``0 + s == s``); ``probe_sums.terms``: the gradient-probe terms in order.
    """

    def __init__(self, k: int, max_tokens: int = 512) -> None:
        super().__init__(k, max_tokens)
        self.call_sums: list[torch.Tensor] = []
        self.call_sumsqs: list[torch.Tensor] = []
        self.probe_sums = _TermLog(list(self.probe_sums))
        self.next_call = 0

    def begin_clip(self, first_call: int) -> None:
        """The global call index of this layer's next call (its first in the next clip)."""
        self.next_call = first_call

    def update(self, x: torch.Tensor) -> None:
        """x: ``(..., K)``; records this call's part (see the class docstring)."""
        if self.max_tokens:
            if len(self.samples) > self.next_call:
                raise RuntimeError("ShardStats: calls out of order (begin_clip was given a call index already seen)")
            self.samples.extend([None] * (self.next_call - len(self.samples)))
        self.next_call += 1
        self.sum = torch.zeros(self.k, dtype=torch.float64)
        self.sumsq = torch.zeros(self.k, dtype=torch.float64)
        super().update(x)
        self.call_sums.append(self.sum)
        self.call_sumsqs.append(self.sumsq)

    def part(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """``(tensors, info)``: the per-call tensors this rank holds, and counts (picklable)."""
        samples = [s for s in self.samples if s is not None]
        terms = [torch.tensor(v, dtype=torch.float64) for v in self.probe_sums.terms.values()]
        tensors = [*samples, *self.call_means, *self.call_absmax, *self.call_sums, *self.call_sumsqs, *terms]
        info = {"calls": len(self.call_sums), "samples": len(samples), "count": self.count,
                "probe_count": self.probe_count, "meta": _meta(tensors)}
        return tensors, info


def _sequential_sum(parts: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    total = torch.zeros(k, dtype=torch.float64)
    for p in parts:
        total += p
    return total


def merge_observed(stats: Sequence[ShardStats], calls: Sequence[int], outputs: Sequence[torch.Tensor],
                   n_clips: int, out_device: torch.device | str = "cpu"
                   ) -> tuple[list[InputStats], list[torch.Tensor]] | None:
    """Merge every rank's :class:`ShardStats` (one per layer, the same layers on every rank) and
    full-precision outputs into what one process observing all ``n_clips`` clips records.

    Args:
        stats: this rank's parts, one per layer, after observing ``clip_shard(n_clips)``.
        calls: calls per clip of each layer (graph form: the layer's call nodes).
        outputs: this rank's model outputs, one per clip of its shard.
        out_device: where merged outputs of other ranks' clips go (the model's device).
    Returns:
        ``(stats, outputs)``: plain :class:`InputStats` per layer and the outputs of all clips in
        clip order, the same on every rank; ``None`` when some layer was not called ``calls``
        times per clip on some rank (the token seeds would be off: observe replicated instead).
    """
    shard = clip_shard(n_clips)
    parts = [st.part() for st in stats]
    out_meta = _meta(outputs)
    ok = all(info["calls"] == len(shard) * c for (_, info), c in zip(parts, calls)) and len(outputs) == len(shard)
    everyone = gather_objects((ok, [info for _, info in parts], out_meta))
    if not all(e[0] for e in everyone):
        return None
    merged: list[InputStats] = []
    if stats:  # max/min are exact in any order: one all-reduce each, for all layers at once
        dev = comm_device()
        absmax = torch.cat([st.absmax for st in stats]).to(dev)
        lo, hi = torch.stack([st.lo for st in stats]).to(dev), torch.stack([st.hi for st in stats]).to(dev)
        dist.all_reduce(absmax, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        absmax, lo, hi = absmax.cpu().split([st.k for st in stats]), lo.cpu(), hi.cpu()
    for i, st in enumerate(stats):
        samples, means, amaxes, sums, sumsqs, terms = [], [], [], [], [], [[] for _ in st.probe_sums.terms]
        for src, (_, infos, _) in enumerate(everyone):
            info = infos[i]
            got = broadcast_tensor_list(parts[i][0] if src == world()[0] else None, src, info["meta"])
            n, c = info["samples"], info["calls"]
            samples += got[:n]
            for dst, j in ((means, 0), (amaxes, 1), (sums, 2), (sumsqs, 3)):
                dst += got[n + j * c: n + (j + 1) * c]
            for dst, t in zip(terms, got[n + 4 * c:]):
                dst += t.tolist()
        m = InputStats(st.k, st.max_tokens)
        m.samples, m.call_means, m.call_absmax = samples, means, amaxes
        m.absmax, m.lo, m.hi = absmax[i].clone(), lo[i].clone(), hi[i].clone()
        m.sum, m.sumsq = _sequential_sum(sums, st.k), _sequential_sum(sumsqs, st.k)
        m.count = sum(infos[i]["count"] for _, infos, _ in everyone)
        m.track_grads = st.track_grads
        for key, ts in zip(st.probe_sums.terms, terms):
            total = 0.0
            for t in ts:  # one process: probe_sums[key] += term, in call order
                total += t
            m.probe_sums[key] = total
        m.probe_count = sum(infos[i]["probe_count"] for _, infos, _ in everyone)
        merged.append(m)
    outs: list[torch.Tensor] = []
    for src, (_, _, meta) in enumerate(everyone):
        outs += broadcast_tensor_list(list(outputs) if src == world()[0] else None, src, meta, out_device)
    return merged, outs
