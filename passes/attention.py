"""Quantized attention: replace ``aten.scaled_dot_product_attention`` by 8-bit attention.

At video token counts attention costs more than all the linears (ENGINEERING.md), so
end-to-end speed needs it quantized too. Each SDPA node without mask, dropout or causal
flag whose key length is at least ``min_kv_tokens`` becomes ``lsgq::int8_attention``
(INT8 ``Q K^T`` with K smoothing, ``P V`` in V's 16-bit type; see :mod:`lsgq_compiler.kernels.attention`).
Decisions are recorded per attention module in ``plan.attention`` (on/off, key length,
and the sensitivity when measured); layers listed in ``keep`` stay in full precision.
"""
from __future__ import annotations

import torch
from torch import fx

import lsgq_compiler.kernels.attention  # noqa: F401  (registers torch.ops.lsgq.int8_attention)

from .infra import PassBase, PassContext, PassResult

SDPA = torch.ops.aten.scaled_dot_product_attention.default
ATTN_KEY = "lsgq_attention"


def attention_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else node.name
    return path[len("model."):] if path.startswith("model.") else path


def _replaceable(n: fx.Node) -> bool:
    kw = dict(n.kwargs)
    extra = list(n.args[3:])
    mask = extra[0] if len(extra) > 0 else kw.get("attn_mask")
    dropout = extra[1] if len(extra) > 1 else kw.get("dropout_p", 0.0)
    causal = extra[2] if len(extra) > 2 else kw.get("is_causal", False)
    gqa = kw.get("enable_gqa", False)
    return mask is None and not dropout and not causal and not gqa


class QuantizeAttention(PassBase):
    """Swap eligible SDPA nodes for 8-bit attention.

    Args:
        min_kv_tokens: leave attentions over fewer keys (e.g. cross-attention to text) alone.
        keep: attention module paths kept in full precision.
    """

    def __init__(self, ctx: PassContext | None = None, min_kv_tokens: int = 256, keep: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.ctx, self.min_kv_tokens, self.keep = ctx, min_kv_tokens, set(keep)

    def call(self, gm: fx.GraphModule) -> PassResult:
        records: dict[str, dict] = {}
        modified = False
        for n in list(gm.graph.nodes):
            if n.op != "call_function" or n.target != SDPA:
                continue
            path = attention_path(n)
            qv, kv = n.args[0].meta.get("val"), n.args[1].meta.get("val")
            n_kv = int(kv.shape[-2]) if kv is not None else 0
            ok = _replaceable(n) and n_kv >= self.min_kv_tokens and path not in self.keep and qv is not None
            records[path] = {"quantized": bool(ok), "kv_tokens": n_kv, "format": "int8-qk/fp16-pv" if ok else "fp"}
            if not ok:
                continue
            scale = n.kwargs.get("scale") or float(qv.shape[-1]) ** -0.5
            with gm.graph.inserting_before(n):
                new = gm.graph.call_function(torch.ops.lsgq.int8_attention.default,
                                             (n.args[0], n.args[1], n.args[2], float(scale), True))
            new.meta.update(n.meta)
            new.meta[ATTN_KEY] = records[path]
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
            modified = True
        if self.ctx is not None:
            self.ctx.notes["attention"] = records
        return PassResult(gm, modified)
