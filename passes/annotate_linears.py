"""Annotate every captured linear with a :class:`LayerSpec` (or take them from a given plan)."""
from __future__ import annotations

import warnings

from torch import fx

from lsgq_compiler.capture import linear_nodes
from lsgq_compiler.errors import user_error
from lsgq_compiler.plan import META_KEY, LayerSpec

from .infra import PassBase, PassContext, PassResult


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
        nodes = linear_nodes(gm)
        if not nodes:
            raise user_error(f"{self.ctx.captured.model_class} has no nn.Linear layers to quantize",
                             "lsgq-compiler quantizes linear layers; pass a transformer with nn.Linear modules")
        cfg, plan = self.ctx.config, self.ctx.plan
        seen: set[str] = set()
        for n in nodes:
            path = n.meta["lsgq_path"]
            w = gm.get_parameter(n.args[1].target)
            n_out, k = w.shape
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
            n.meta[META_KEY] = spec
            seen.add(path)
        if plan is not None:
            missing = set(plan.layers) - seen
            if missing:
                raise user_error(f"plan names {len(missing)} layers the model does not have, e.g. {sorted(missing)[:3]}",
                                 "re-apply a plan only to a capture of the model it was made for")
        return PassResult(gm, True)
