"""CUDA-graph replay of a deployed model at fixed shapes: its kernels without its Python.

A deployed model calls one custom op per planned linear (``lsgq::rot_fp8_linear`` and friends),
each with a Triton prologue and a cuBLAS GEMM. At small token counts the GPU finishes those
kernels faster than Python can launch them: Wan2.1-1.3B deployed at 14k tokens spends about
130 ms of GPU time in a 353 ms call on the H200 (README, "Deploying"). Capturing the call once
in a ``torch.cuda.CUDAGraph`` and replaying it removes that host time. A one-step VSR model is
called at one tile shape for a whole video, which is the case graphs are for.

    from lsgq_compiler.deploy import cuda_graphs
    fast = cuda_graphs(lsgq_compiler.from_pretrained("ckpt", device="cuda"))
    out = fast(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]

Each new combination of input shapes, dtypes and non-tensor arguments is captured once (after
two warm-up calls on a side stream, which also run Triton's autotuning) and kept, up to
``max_graphs`` (the least recently used is dropped past that). Later calls copy the inputs into
the captured ones, replay and return a copy of the outputs. Graphs share one memory pool.
Inference only: calls run under ``torch.no_grad()``. Off CUDA the wrapper calls the model.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["GraphedModel", "cuda_graphs"]


def _signature(leaves: list, spec: Any) -> tuple:
    """A hashable key of a call's flattened arguments: each tensor's shape, dtype and device; other
    values by ``repr``; the arguments' structure."""
    key = tuple(("T", tuple(v.shape), v.dtype, str(v.device)) if isinstance(v, torch.Tensor) else ("V", repr(v))
                for v in leaves)
    return key, str(spec)


class _Captured:
    """One captured call: the static inputs it reads, the graph, the static outputs it writes."""

    def __init__(self, model: nn.Module, leaves: list, spec: Any, pool: Any) -> None:
        self.spec = spec
        self.static = [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in leaves]
        s_args, s_kwargs = pytree.tree_unflatten(self.static, self.spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # allocator warm-up, Triton autotuning, lazy kernel-layout builds
                model(*s_args, **s_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, pool=pool):
            self.out = model(*s_args, **s_kwargs)

    def __call__(self, leaves: list) -> Any:
        """Replay on ``leaves`` (the call's flattened arguments, of this graph's signature)."""
        for dst, src in zip(self.static, leaves):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        self.graph.replay()
        return pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, self.out)


class GraphedModel(nn.Module):
    """``model`` replayed from CUDA graphs, one per input signature (see the module docstring).

    Attributes the wrapper does not have (``config``, ``dtype``, ...) are the model's, so a
    diffusers pipeline can take it as its transformer. ``graphs`` counts the captured ones.
    """

    def __init__(self, model: nn.Module, max_graphs: int = 4) -> None:
        super().__init__()
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1 (got {max_graphs})")
        self.model = model
        self.max_graphs = int(max_graphs)
        self._graphs: OrderedDict = OrderedDict()
        self._pool: Any = None

    @property
    def graphs(self) -> int:
        """How many input signatures are captured now."""
        return len(self._graphs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's call, replayed from the graph captured for these input shapes (captured now on
        the first call with them). Tensors on the CPU, or no CUDA: the model is called directly."""
        leaves, spec = pytree.tree_flatten((args, kwargs))  # once per call: key, copies and capture use it
        tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
        if not torch.cuda.is_available() or not tensors or not all(v.is_cuda for v in tensors):
            with torch.no_grad():
                return self.model(*args, **kwargs)
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("cuda_graphs: the wrapped model is already being captured by an outer CUDA graph")
        key = _signature(leaves, spec)
        cap = self._graphs.get(key)
        if cap is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            cap = self._graphs[key] = _Captured(self.model, leaves, spec, self._pool)
        self._graphs.move_to_end(key)
        return cap(leaves)

    def reset(self) -> None:
        """Drop every captured graph (e.g. after changing the model's weights in place)."""
        self._graphs.clear()
        self._pool = None


def cuda_graphs(model: nn.Module, max_graphs: int = 4) -> GraphedModel:
    """``model`` (e.g. from :func:`lsgq_compiler.from_pretrained`, any ``nn.Module``) wrapped in a
    :class:`GraphedModel`: each input signature captured once in a CUDA graph and replayed. The model
    itself is not changed; ``max_graphs``: signatures kept (least recently used dropped past it)."""
    if isinstance(model, GraphedModel):
        return model
    return GraphedModel(model, max_graphs)
