"""Interleaving writes -> ``stack`` + ``flatten``: RoPE that exports without ScatterND.

Diffusers' interleaved rotary embedding (Wan, CogVideoX's ``use_real_unbind_dim=-1``) builds its
output by writing into strided views of an empty tensor::

    out = torch.empty_like(x)          # (..., D)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos

In the captured graph that is ``empty_like`` + two ``slice(step=2)`` + ``copy_``. The ONNX
exporter turns each strided write into a ``ScatterND`` on the last axis, which onnxruntime
runs with a transpose of the whole tensor to and from axis 0: 23 % of ORT FP32 time on the
shipped model (bench/cpu_backends.py profile). The same value is ``stack([even, odd], -1)``
flattened over the last two axes, which exports as ``Unsqueeze``/``Concat``/``Reshape``.

The rewrite is exact (same elements, same order) and matches only the full pattern: an
``empty_like`` whose only uses are the two step-2 slices over the last axis (starts 0 and 1,
each written once by ``copy_`` with a value of the slice's shape and dtype) and reads after
both writes. Anything else is left alone.
"""
from __future__ import annotations

import torch
from torch import fx

from .infra import PassBase, PassResult

_aten = torch.ops.aten
_EMPTY = (_aten.empty_like.default,)
_SLICE = (_aten.slice.Tensor,)
_COPY = (_aten.copy_.default,)


def _val(n: object):
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _strided_write(s: fx.Node, ndim: int, size: int) -> tuple[int, fx.Node, fx.Node] | None:
    """``(start, copy node, value)`` if ``s`` is ``slice(E, -1, start, end, 2)`` written once by copy_."""
    if s.op != "call_function" or s.target not in _SLICE:
        return None
    args = list(s.args) + [None] * (5 - len(s.args))
    dim, start, end, step = (args[1] if args[1] is not None else 0), args[2] or 0, args[3], args[4] or 1
    if dim not in (-1, ndim - 1) or step != 2 or start not in (0, 1) or (end is not None and end < size):
        return None
    users = list(s.users)
    if len(users) != 1 or users[0].op != "call_function" or users[0].target not in _COPY or users[0].args[0] is not s:
        return None
    cp = users[0]
    if len(cp.users) != 0:
        return None
    value, sv = cp.args[1], _val(s)
    vv = _val(value)
    if sv is None or vv is None or tuple(vv.shape) != tuple(sv.shape) or vv.dtype != sv.dtype:
        return None
    return int(start), cp, value


class InterleaveToStack(PassBase):
    """Replace ``empty_like`` + strided even/odd ``copy_`` by ``stack(...).flatten(-2)``.

    ``self.rewritten`` counts the patterns replaced by the last call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rewritten = 0

    def call(self, gm: fx.GraphModule) -> PassResult:
        g = gm.graph
        order = {n: i for i, n in enumerate(g.nodes)}
        self.rewritten = 0
        for e in list(g.nodes):
            if e.op != "call_function" or e.target not in _EMPTY:
                continue
            ev = _val(e)
            if ev is None or ev.ndim < 1 or ev.shape[-1] % 2:
                continue
            writes, reads = {}, []
            for u in e.users:
                w = _strided_write(u, ev.ndim, int(ev.shape[-1]))
                if w is None:
                    reads.append(u)
                elif w[0] in writes:
                    break
                else:
                    writes[w[0]] = (u, w[1], w[2])
            else:
                if set(writes) != {0, 1}:
                    continue
                last_copy = max((writes[0][1], writes[1][1]), key=order.__getitem__)
                if any(order[r] < order[last_copy] for r in reads):
                    continue  # a read between the writes sees a half-written tensor
                with g.inserting_after(last_copy):
                    st = g.call_function(_aten.stack.default, ([writes[0][2], writes[1][2]], -1))
                with g.inserting_after(st):
                    flat = g.call_function(_aten.reshape.default, (st, list(ev.shape)))
                st.meta["val"] = torch.stack([_val(writes[0][2]), _val(writes[1][2])], -1)
                flat.meta["val"] = st.meta["val"].reshape(ev.shape)
                for key in ("nn_module_stack", "stack_trace"):
                    if key in e.meta:
                        st.meta[key] = flat.meta[key] = e.meta[key]
                e.replace_all_uses_with(flat, delete_user_cb=lambda u: u in reads)
                for s, cp, _ in writes.values():
                    g.erase_node(cp)
                    g.erase_node(s)
                g.erase_node(e)
                order = {n: i for i, n in enumerate(g.nodes)}
                self.rewritten += 1
        if self.rewritten:
            g.lint()
            gm.recompile()
        return PassResult(gm, self.rewritten > 0)
