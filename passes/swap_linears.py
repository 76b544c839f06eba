"""Replace each annotated ``aten.linear`` node by a call to a :class:`QuantLinear` module."""
from __future__ import annotations

from torch import fx

from lsgq_compiler.plan import META_KEY
from lsgq_compiler.qlinear import QuantLinear

from .infra import PassBase, PassResult, is_module_form


class SwapLinears(PassBase):
    """``linear(x, W, b)`` -> ``call_module(path)(x)`` with a QuantLinear at the same FQN.

    Full-precision layers are swapped too (their QuantLinear has no quantizer), so every
    layer can be observed during calibration. Idempotent: swapped nodes are not linears.
    In module form (no graph) the linear modules of the eager copy are replaced in place.
    """

    def call(self, gm: fx.GraphModule) -> PassResult:
        if is_module_form(gm):
            return self._module_form(gm)
        modified = False
        for n in list(gm.graph.nodes):
            spec = n.meta.get(META_KEY)
            if n.op != "call_function" or spec is None:
                continue
            target = n.meta["lsgq_target"]
            old = gm.get_submodule(target)
            if not isinstance(old, QuantLinear):
                gm.set_submodule(target, QuantLinear.from_linear(old, spec))
            with gm.graph.inserting_before(n):
                new = gm.graph.call_module(target, (n.args[0],))
            new.meta.update(n.meta)
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
            modified = True
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        return PassResult(gm, modified)

    @staticmethod
    def _module_form(gm) -> PassResult:
        """Module form: replace each annotated ``nn.Linear`` of the eager copy in place (same
        FQN, so the model's own forward now calls the QuantLinear)."""
        specs = getattr(gm, "lsgq_specs", {})
        for path, spec in specs.items():
            old = gm.model.get_submodule(path)
            if not isinstance(old, QuantLinear):
                gm.model.set_submodule(path, QuantLinear.from_linear(old, spec))
        return PassResult(gm, bool(specs))
