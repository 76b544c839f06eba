"""The per-layer plan: typed decisions in node metadata, gathered into a JSON-able mapping.

Each quantizable linear node carries ``node.meta["lsgq"]``, a :class:`LayerSpec`. Passes
read and write these records; :class:`Plan` gathers them keyed by module path (FQN) so a
plan can be saved, edited by hand and re-applied to a fresh capture of the same model
(for example at another input shape).
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import user_error
from .fsutil import atomic_write_text  # noqa: F401  (re-exported: older imports use plan.atomic_write_text)

META_KEY = "lsgq"
PLAN_FORMAT_VERSION = 1


@dataclass
class LayerSpec:
    """Decisions for one linear layer. ``None`` bits mean full precision.

    Args:
        module_path: the layer's FQN in the user's model, e.g. ``blocks.0.attn1.to_q``.
        in_features / out_features: K and N of ``W: (N, K)``.
        weight_bits / act_bits: 2..8 or None (full precision).
        weight_granularity: ``"row"`` (per output channel) or ``"group"``.
        act_granularity: ``"token"``, ``"tensor"`` or ``"channel"``.
        act_quantizer: ``"dynamic"`` (min/max this call), ``"static"`` (from calibration),
            ``"draq"`` (online per-channel range, per-token, LSGQuant) or ``"draq_static"``.
        sensitivity: calibrated importance score (higher = more sensitive).
        tier: VOLTS training tier: ``"frozen"``, ``"light"``, ``"full"``.
        rank: rank of the full-precision low-rank branch (0 = none).
        rotate: Hadamard-rotate the input of the quantized path.
        smooth_alpha: SmoothQuant migration strength (None = no smoothing).
        train_iters: training budget assigned to this layer.
        extra: recipe-specific JSON-able notes.
    """

    module_path: str
    in_features: int
    out_features: int
    weight_bits: int | None = None
    act_bits: int | None = None
    weight_granularity: str = "row"
    weight_symmetric: bool = False
    group_size: int | None = None
    act_granularity: str = "token"
    act_symmetric: bool = True
    act_quantizer: str = "dynamic"
    sensitivity: float | None = None
    tier: str | None = None
    rank: int = 0
    rotate: bool = False
    smooth_alpha: float | None = None
    train_iters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.weight_bits is not None or self.act_bits is not None

    @property
    def fmt(self) -> str:
        """Short format tag, e.g. ``W4A4`` or ``FP``."""
        if not self.quantized:
            return "FP"
        w = f"W{self.weight_bits}" if self.weight_bits else "W16"
        a = f"A{self.act_bits}" if self.act_bits else "A16"
        return w + a

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str | None = None) -> "LayerSpec":
        """Build and validate one plan entry (``key``: its key in ``Plan.layers``, for messages).

        Raises ValueError/TypeError naming the layer and the field for a missing field, a
        field of the wrong type, or bits outside 2..8."""
        name = key if key is not None else (d.get("module_path", "?") if isinstance(d, dict) else "?")
        if not isinstance(d, dict):
            raise user_error(f"plan layer {name!r} is {type(d).__name__}, not a mapping of fields",
                             "each entry of 'layers' is an object like the ones Plan.save writes", TypeError)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise user_error(f"plan layer {name!r} has unknown fields {sorted(unknown)}",
                             f"known fields: {sorted(known)}")
        missing = [f for f in ("module_path", "in_features", "out_features") if f not in d]
        if missing:
            raise user_error(f"plan layer {name!r} lacks the required field(s) {missing}",
                             "restore them (module_path, in_features, out_features), or re-make the plan")
        for f, value in d.items():
            _check_field(name, f, value)
        return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_field(layer: str, f: str, v: Any) -> None:
    """One field of a plan entry: the right type and range, or a clear error naming both."""
    def bad(why: str, todo: str, cls: type[Exception] = ValueError) -> Exception:
        return user_error(f"plan layer {layer!r}: {f}={v!r} {why}", todo, cls)

    if f in ("weight_bits", "act_bits"):
        if v is None:
            return
        if not _is_int(v):
            raise bad(f"is {type(v).__name__}, not an integer", "use an integer 2..8, or null for full precision",
                      TypeError)
        if not 2 <= v <= 8:
            raise bad("is outside 2..8", "use an integer 2..8, or null for full precision")
    elif f in ("in_features", "out_features"):
        if not _is_int(v) or v < 1:
            raise bad("is not a positive integer", "use the layer's real size", TypeError if not _is_int(v) else
                      ValueError)
    elif f in ("rank", "train_iters"):
        if not _is_int(v) or v < 0:
            raise bad("is not a non-negative integer", "use 0 or a positive integer",
                      TypeError if not _is_int(v) else ValueError)
    elif f == "group_size":
        if v is not None and (not _is_int(v) or v < 1):
            raise bad("is not a positive integer or null", "use e.g. 64, or null")
    elif f in ("weight_symmetric", "act_symmetric", "rotate"):
        if not isinstance(v, bool):
            raise bad(f"is {type(v).__name__}, not true/false", "use true or false", TypeError)
    elif f in ("sensitivity", "smooth_alpha"):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v):
            raise bad("is not a number or null", "use a number, or null", TypeError)
    elif f in ("module_path", "weight_granularity", "act_granularity", "act_quantizer"):
        if not isinstance(v, str) or not v:
            raise bad("is not a non-empty string", "use the value Plan.save wrote", TypeError)
    elif f == "tier":
        if v is not None and not isinstance(v, str):
            raise bad("is not a string or null", "use 'frozen', 'light', 'full' or null", TypeError)
    elif f == "extra":
        if not isinstance(v, dict):
            raise bad("is not a mapping", "use an object ({} for none)", TypeError)


@dataclass
class Plan:
    """Per-layer decisions keyed by module path, plus provenance.

    Round-trips through JSON: ``Plan.from_json(plan.to_json()) == plan``.
    """

    layers: dict[str, LayerSpec] = field(default_factory=dict)
    model_class: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_FORMAT_VERSION
    attention: dict[str, dict[str, Any]] = field(default_factory=dict)  # attention module path -> decision

    def __getitem__(self, path: str) -> LayerSpec:
        return self.layers[path]

    def __contains__(self, path: object) -> bool:
        return path in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def quantized_layers(self) -> list[LayerSpec]:
        return [s for s in self.layers.values() if s.quantized]

    def summary(self) -> dict[str, Any]:
        """Counts per format and the average weight/activation bits of quantized layers
        (weighted by parameter count for weights)."""
        fmts: dict[str, int] = {}
        for s in self.layers.values():
            fmts[s.fmt] = fmts.get(s.fmt, 0) + 1
        q = self.quantized_layers()
        nparam = sum(s.in_features * s.out_features for s in q) or 1
        wbits = sum((s.weight_bits or 16) * s.in_features * s.out_features for s in q) / nparam
        abits = sum((s.act_bits or 16) for s in q) / max(len(q), 1)
        return {"layers": len(self.layers), "quantized": len(q), "formats": fmts,
                "avg_weight_bits": round(wbits, 3), "avg_act_bits": round(abits, 3)}

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "model_class": self.model_class, "config": self.config,
                "layers": {k: v.to_dict() for k, v in self.layers.items()}, "attention": self.attention}

    def to_json(self, indent: int = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        """Build and validate a plan: ``layers`` a mapping of module path -> entry whose
        ``module_path`` equals its key, every entry valid (:meth:`LayerSpec.from_dict`),
        ``version`` an integer this lsgq-compiler reads. Raises ValueError/TypeError saying
        which layer and field is wrong."""
        if not isinstance(d, dict) or "layers" not in d:
            raise user_error("not a plan: no 'layers' mapping", "load a JSON written by Plan.save / qm.plan.save")
        version = d.get("version", PLAN_FORMAT_VERSION)
        if not _is_int(version) or version < 1:
            raise user_error(f"plan version {version!r} is not a positive integer",
                             f"use {PLAN_FORMAT_VERSION} (the version Plan.save writes)", TypeError)
        if version > PLAN_FORMAT_VERSION:
            raise user_error(f"plan format version {version} is newer than this lsgq-compiler "
                             f"({PLAN_FORMAT_VERSION})", "upgrade lsgq-compiler")
        layers = d["layers"]
        if not isinstance(layers, dict):
            raise user_error(f"plan 'layers' is {type(layers).__name__}, not a mapping of module path -> entry",
                             "write layers as {\"blocks.0.attn1.to_q\": {...}, ...}", TypeError)
        for f, typ in (("model_class", str), ("config", dict), ("attention", dict)):
            if f in d and not isinstance(d[f], typ):
                raise user_error(f"plan field {f!r} is {type(d[f]).__name__}, not {typ.__name__}",
                                 "use the value Plan.save wrote", TypeError)
        specs = {}
        for k, v in layers.items():
            spec = LayerSpec.from_dict(v, key=k)
            if spec.module_path != k:
                raise user_error(f"plan layer {k!r} has module_path {spec.module_path!r}; the key and the "
                                 "module_path must be the same", "make them equal (the module's path in the model)")
            specs[k] = spec
        return cls(layers=specs, model_class=d.get("model_class", ""), config=d.get("config", {}),
                   version=version, attention=d.get("attention", {}))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise user_error(f"plan is not valid JSON ({e})", "check the file was not truncated or hand-edited badly") from None
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON atomically (temporary file, then rename)."""
        return atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise user_error(f"plan file {p} does not exist", "pass the path of a JSON plan saved by Plan.save")
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            raise user_error(f"plan file {p} is not text", "pass a JSON plan saved by Plan.save") from None
        return cls.from_json(text)
