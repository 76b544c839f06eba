"""Module form: quantizing a model torch.export cannot trace, without a graph.

When ``torch.export`` fails (data-dependent Python such as HunyuanVideo15's ``if is_t2v:``,
OmniGen's ``if seq_len > ...``, Lumina2's ``len(set(seq_lengths))``, HiDream's MoE routing through
``.cpu().numpy()``; custom DiTs with variable-length attention), ``QuantConfig(capture="auto")``
(the default) or ``capture="module"`` keeps a deep copy of the user's eager model:

- :func:`lsgq_compiler.capture.capture` runs it once on the example inputs and lists the
  ``nn.Linear`` modules its forward calls, in call order;
- ``AnnotateLinears`` gives each a :class:`~lsgq_compiler.plan.LayerSpec` and ``SwapLinears``
  replaces each by a :class:`~lsgq_compiler.qlinear.QuantLinear` at the same path, so the model's
  own forward (branches, loops, ``.item()``) now calls the quantized modules;
- every pass that works layer by layer (observe, sensitivity, bits, rotation, low-rank,
  smoothing (applied inside QuantLinear, not folded into a producer), quantizers, QAO) finds
  the modules through ``passes.infra.quant_nodes`` and runs unchanged: statistics are gathered
  by the QuantLinear observers during ordinary forward calls;
- graph-only passes (``passes.infra.GRAPH_ONLY_PASSES``: 8-bit attention replacing SDPA nodes)
  are skipped; each layer's ``extra["capture"] = "module"`` and ``extra["skipped"]`` say so in
  the plan, and ``report()`` rows carry ``capture``.

Graph-only backends (ONNX lowering) need the graph form.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .capture import GRAPH_ONLY_STEPS, Captured
from .plan import Plan


def record_capture(gm: nn.Module, captured: Captured, plan: Plan, info: dict[str, Any]) -> None:
    """Write what capture decided into ``info["capture"]`` and, in module form, into every
    layer of ``plan`` (``extra["capture"]``, ``extra["skipped"]``: the graph-only steps)."""
    notes = captured.notes()
    skipped = list(getattr(gm, "lsgq_skipped", []))
    if captured.form == "module":
        notes["skipped"] = skipped or list(GRAPH_ONLY_STEPS)
        for spec in plan.layers.values():
            spec.extra["capture"] = "module"
            spec.extra["skipped"] = "; ".join(notes["skipped"])
    info["capture"] = notes
