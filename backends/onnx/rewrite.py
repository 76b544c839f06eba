"""Export-graph rewrites: RoPE writes without ScatterND, SDPA as onnxruntime's MultiHeadAttention,
packed 4-bit initializers."""
from __future__ import annotations

import copy

import torch
from torch import fx



def export_graph(gm: fx.GraphModule, contrib_ops: bool = True) -> fx.GraphModule:
    """A GraphModule sharing ``gm``'s modules and weights whose graph (a copy) has the export
    rewrites applied: :class:`~lsgq_compiler.passes.interleave.InterleaveToStack` (interleaved
    RoPE writes without ScatterND) and, with ``contrib_ops``, full-precision SDPA as onnxruntime's
    ``com.microsoft.MultiHeadAttention``. ``gm`` is not modified."""
    from lsgq_compiler.passes.interleave import InterleaveToStack

    out = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    InterleaveToStack()(out)
    if contrib_ops:
        _sdpa_to_mha(out)
    return out


def _sdpa_to_mha(gm: fx.GraphModule) -> int:
    """Full-precision SDPA nodes (no mask, dropout, causal flag or GQA; 4-D) -> ``lsgq_onnx::attention``
    (exported as ``com.microsoft.MultiHeadAttention``). Returns the number replaced."""
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    count = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target != sdpa or len(n.args) > 3:
            continue
        kw = dict(n.kwargs)
        qv = n.args[0].meta.get("val") if isinstance(n.args[0], fx.Node) else None
        if (qv is None or qv.ndim != 4 or kw.get("attn_mask") is not None or kw.get("dropout_p", 0.0)
                or kw.get("is_causal", False) or kw.get("enable_gqa", False)):
            continue
        scale = kw.get("scale") or float(qv.shape[-1]) ** -0.5
        with gm.graph.inserting_before(n):
            new = gm.graph.call_function(torch.ops.lsgq_onnx.attention.default,
                                         (*n.args[:3], float(scale), int(qv.shape[1])))
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
        count += 1
    if count:
        gm.recompile()
    return count


def fold_lowbit_casts(proto):
    """Replace ``Cast(initializer, to=UINT4/INT4)`` by a packed 4-bit initializer (halves the file)."""
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    types = {TensorProto.UINT4: ml_dtypes.uint4, TensorProto.INT4: ml_dtypes.int4}
    consumers: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    keep = []
    for n in proto.graph.node:
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type == "Cast" and to in types and n.input[0] in inits:
            arr = numpy_helper.to_array(inits[n.input[0]])
            proto.graph.initializer.append(numpy_helper.from_array(arr.astype(types[to]), n.output[0]))
            consumers[n.input[0]] -= 1
            continue
        keep.append(n)
    if len(keep) != len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
        unused = [t for t in proto.graph.initializer if consumers.get(t.name, 1) == 0]
        for t in unused:
            proto.graph.initializer.remove(t)
    return proto
