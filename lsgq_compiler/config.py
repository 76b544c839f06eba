"""`QuantConfig`: the validated, JSON-round-trippable description of a quantization job."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import user_error

#: Module-path fragments kept in full precision by default: patch embedding, time/text
#: embeddings and the final projection (the names diffusers uses across Wan, CogVideoX,
#: LTX, Hunyuan, Flux, SD3, PixArt and DiT).
DEFAULT_KEEP_FP: tuple[str, ...] = (
    "patch_embed", "pos_embed", "x_embedder", "img_in",
    "condition_embedder", "time_embed", "time_proj", "timestep_embedder", "time_text_embed",
    "text_embed", "caption_projection", "context_embedder", "txt_in", "adaln_single",
    "proj_out", "norm_out", "final_layer",
)

SUPPORTED_BITS = range(2, 9)


#: every key a recipe or pass reads from ``QuantConfig.options`` (tests/test_config.py checks that
#: the sources read no other): a misspelled option is an error, not silently ignored
KNOWN_OPTIONS: frozenset[str] = frozenset({
    "act", "alpha", "attention_calib_batches", "attention_min_kv", "attention_min_sqnr_db", "block",
    "block_fraction", "bound_iters", "draq", "draq_static", "e2e_iters", "full_iters", "grid", "group_size",
    "hadamard_max_block",
    "image_iters", "lba_iters", "let_iters", "light_iters", "lowrank_in_gemm", "lowrank_iters", "lowrank_share", "lr",
    "metric_batches", "mixed_precision", "module_iters", "observe_grads", "observe_tokens", "probes", "qao_iters",
    "rank", "rank_step", "rotate", "sensitivity", "skew_threshold", "target_draq_alpha", "train_iters",
    "train_mode", "train_tokens", "uniform_bits", "volts",
})


@dataclass
class QuantConfig:
    """What to quantize and how.

    Args:
        recipe: a registered recipe name (``lsgq recipes`` lists them), e.g. ``"minmax"``.
        weight_bits: default weight bit-width, 2..8.
        act_bits: default activation bit-width, 2..8.
        keep_fp: module-path fragments (substring match) whose linears stay in full precision.
        seed: seeds every random choice (Hadamard signs, training order, sampling).
        allowed_bits: bit-widths a mixed-precision allocator may pick from.
        time_budget_s: soft wall-time limit for training stages (None: no limit).
        options: recipe-specific options (e.g. ``{"lowrank_share": 0.02}``), JSON-able.
        attention_bits: 8 replaces eligible attention by 8-bit attention (INT8 Q.K^T, 16-bit P.V:
            our Triton kernel on CUDA, a simulation on CPU; ONNX export runs Q.K^T on
            onnxruntime's integer MatMul, per tensor); None keeps attention in full precision.
            Per layer: attentions over fewer than ``options["attention_min_kv"]`` keys (256) stay
            in full precision, and so do layers whose 8-bit output measures below
            ``options["attention_min_sqnr_db"]`` (25 dB) against SDPA on the first
            ``options["attention_calib_batches"]`` (2) calibration batches; ``plan.attention``
            records each decision.
        target: where the model will run (``lsgq_compiler.deploy.targets``): ``"sim"`` (any
            format, simulated in float), ``"cuda-sm90"`` (W4 as int4 per row on the FP8 tensor
            cores), ``"cuda-sm90-g128"`` (W4 as int4 in groups of 128, mslk's mixed-input kernel),
            ``"cuda-sm100"``, ``"cuda-sm89"``, ``"cuda-sm80"`` or ``"cpu"``. A target restricts each layer to the formats its kernels
            run and sets the quantizer grid to exactly what the kernel computes; each layer's
            ``extra["target"]`` records what the recipe asked for and what it became.
        capture: ``"graph"`` (torch.export to an FX graph), ``"module"`` (the eager model with its
            linears swapped for QuantLinear, no graph: graph-only steps such as 8-bit attention are
            skipped and listed in ``plan.layers[*].extra`` / ``report()``) or ``"auto"`` (graph,
            else module form when torch.export cannot trace the model).

    Example:
        >>> QuantConfig(recipe="minmax", weight_bits=8, act_bits=8)
    """

    recipe: str = "minmax"
    weight_bits: int = 8
    act_bits: int = 8
    keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP
    seed: int = 0
    allowed_bits: tuple[int, ...] = (4, 6, 8)
    time_budget_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    attention_bits: int | None = None
    target: str = "sim"
    capture: str = "auto"

    def __post_init__(self) -> None:
        from .recipes import RECIPES  # late: recipes import passes which import config

        if self.recipe not in RECIPES:
            raise user_error(f"unknown recipe {self.recipe!r}",
                             f"use one of: {', '.join(sorted(RECIPES))} (`lsgq recipes` lists them)")
        for name in ("weight_bits", "act_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise user_error(f"{name} must be an int, got {type(v).__name__}",
                                 "pass an integer between 2 and 8", TypeError)
            if v not in SUPPORTED_BITS:
                raise user_error(f"{name}={v} is outside the supported range 2..8",
                                 "choose a bit-width between 2 and 8 (e.g. 4, 6 or 8)")
        if isinstance(self.keep_fp, str):
            raise user_error("keep_fp must be a sequence of module-path fragments, got a str",
                             "wrap it in a tuple, e.g. keep_fp=('proj_out',)", TypeError)
        self.keep_fp = tuple(self.keep_fp)
        self.allowed_bits = tuple(sorted(set(self.allowed_bits)))
        bad = [b for b in self.allowed_bits if b not in SUPPORTED_BITS]
        if bad or not self.allowed_bits:
            raise user_error(f"allowed_bits {self.allowed_bits} must be non-empty and within 2..8",
                             "e.g. allowed_bits=(4, 6, 8)")
        if self.time_budget_s is not None and (isinstance(self.time_budget_s, bool) or not isinstance(
                self.time_budget_s, (int, float)) or not self.time_budget_s > 0):  # NaN fails "> 0" too
            raise user_error(f"time_budget_s={self.time_budget_s!r} must be a positive number of seconds",
                             "or None for no limit")
        if self.capture not in ("graph", "module", "auto"):
            raise user_error(f"capture={self.capture!r} is not a capture form",
                             "use 'graph' (torch.export), 'module' (the eager model, no graph) or 'auto' "
                             "(graph, else module form)")
        from .deploy.targets import TARGET_NAMES  # late, like RECIPES

        if self.target not in TARGET_NAMES:
            raise user_error(f"unknown target {self.target!r}",
                             f"use one of: {', '.join(TARGET_NAMES)} ('sim': any format, simulated)")
        if self.attention_bits not in (None, 8):
            raise user_error(f"attention_bits={self.attention_bits} is not supported",
                             "use 8 (INT8 Q.K^T with 16-bit P.V) or None (full-precision attention)")
        if not isinstance(self.options, dict):
            raise user_error(f"options must be a dict, got {type(self.options).__name__}",
                             "e.g. options={'lowrank_share': 0.02}", TypeError)
        unknown = sorted(k for k in self.options if k not in KNOWN_OPTIONS)
        if unknown:
            import difflib

            hints = {k: difflib.get_close_matches(str(k), sorted(KNOWN_OPTIONS), n=1) for k in unknown}
            said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise user_error(f"unknown option(s) {said}", f"known options: {', '.join(sorted(KNOWN_OPTIONS))}")
        try:
            json.dumps(self.options)
        except TypeError as e:
            raise user_error(f"options must be JSON-serialisable ({e})", "use numbers, strings, lists and dicts",
                             TypeError) from None

    @property
    def tag(self) -> str:
        """Short name such as ``minmax-w4a4`` (``minmax-w8a8-attn8`` with 8-bit attention)."""
        return f"{self.recipe}-w{self.weight_bits}a{self.act_bits}" + (f"-attn{self.attention_bits}"
                                                                       if self.attention_bits else "")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["keep_fp"] = list(self.keep_fp)
        d["allowed_bits"] = list(self.allowed_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise user_error(f"unknown QuantConfig fields {sorted(unknown)}", f"known fields: {sorted(known)}")
        d = dict(d)
        for k in ("keep_fp", "allowed_bits"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
