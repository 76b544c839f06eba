"""Annotate every captured linear with a :class:`LayerSpec` (or take them from a given plan)."""
from __future__ import annotations

import warnings

from torch import fx

from lsgq_compiler.capture import linear_nodes
from lsgq_compiler.errors import user_error
from lsgq_compiler.plan import META_KEY, LayerSpec

from .infra import PassBase, PassContext, PassResult, is_module_form


class AnnotateLinears(PassBase):
    """Give each linear node ``node.meta["lsgq"]``.

    Layers whose path contains a ``config.keep_fp`` fragment stay full precision; the
    rest get the config's default bits and the recipe's granularities (``defaults``).
    With ``ctx.plan`` set, specs come from the plan instead (re-applying a saved plan).
    """

    def __init__(self, ctx: PassContext, **defaults) -> None:
        super().__init__()
        self.ctx, self.defaults = ctx, defaults

    def call(self, gm: fx.GraphModule) -> PassResult:
        if is_module_form(gm):
            return self._module_form(gm)
        nodes = linear_nodes(gm)
        if not nodes:
            raise user_error(f"{self.ctx.captured.model_class} has no nn.Linear layers to quantize",
                             "lsgq-compiler quantizes linear layers; pass a transformer with nn.Linear modules")
        seen: set[str] = set()
        for n in nodes:
            path = n.meta["lsgq_path"]
            w = gm.get_parameter(n.args[1].target)
            n.meta[META_KEY] = self._spec(path, *w.shape)
            seen.add(path)
        self._check_plan(seen)
        return PassResult(gm, True)

    def _module_form(self, gm) -> PassResult:
        """Module form: a spec per ``nn.Linear`` the forward called on the example inputs,
        kept on the root (``gm.lsgq_specs``, call order) for SwapLinears."""
        order = list(self.ctx.captured.module_linears)
        mods = dict(gm.model.named_modules())
        if not order:
            raise user_error(f"{self.ctx.captured.model_class} calls no nn.Linear layers on the example inputs",
                             "lsgq-compiler quantizes linear layers; pass a transformer with nn.Linear modules")
        out = {}
        for path in order:
            w = mods[path].weight
            out[path] = self._spec(path, *w.shape)
            out[path].extra["capture"] = "module"
        gm.lsgq_specs, gm.lsgq_order = out, order
        self._check_plan(set(order))
        return PassResult(gm, True)

    def _spec(self, path: str, n_out: int, k: int) -> LayerSpec:
        cfg, plan = self.ctx.config, self.ctx.plan
        if plan is not None:
            if path not in plan:
                warnings.warn(f"plan has no entry for {path}: kept in full precision", stacklevel=2)
                spec = LayerSpec(path, k, n_out)
            else:
                spec = plan[path]
                if (spec.in_features, spec.out_features) != (k, n_out):
                    raise user_error(f"plan entry {path} is for a ({spec.out_features}, {spec.in_features}) "
                                     f"weight but the model has ({n_out}, {k})",
                                     "re-apply a plan only to the model it was made for")
        elif any(frag in path for frag in cfg.keep_fp):
            spec = LayerSpec(path, k, n_out)
        else:
            spec = LayerSpec(path, k, n_out, weight_bits=cfg.weight_bits, act_bits=cfg.act_bits, **self.defaults)
        return spec

    def _check_plan(self, seen: set[str]) -> None:
        plan = self.ctx.plan
        if plan is not None:
            missing = set(plan.layers) - seen
            if missing:
                raise user_error(f"plan names {len(missing)} layers the model does not have, e.g. {sorted(missing)[:3]}",
                                 "re-apply a plan only to a capture of the model it was made for")
