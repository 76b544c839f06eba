"""The per-layer plan: typed decisions in node metadata, gathered into a JSON-able mapping.

Each quantizable linear node carries ``node.meta["lsgq"]``, a :class:`LayerSpec`. Passes
read and write these records; :class:`Plan` gathers them keyed by module path (FQN) so a
plan can be saved, edited by hand and re-applied to a fresh capture of the same model
(for example at another input shape).
"""
from __future__ import annotations

import dataclasses
import json
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
    def from_dict(cls, d: dict[str, Any]) -> "LayerSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise user_error(f"plan entry {d.get('module_path', '?')!r} has unknown fields {sorted(unknown)}",
                             f"known fields: {sorted(known)}")
        return cls(**d)


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
        if not isinstance(d, dict) or "layers" not in d:
            raise user_error("not a plan: no 'layers' mapping", "load a JSON written by Plan.save / qm.plan.save")
        if d.get("version", PLAN_FORMAT_VERSION) > PLAN_FORMAT_VERSION:
            raise user_error(f"plan format version {d['version']} is newer than this lsgq-compiler "
                             f"({PLAN_FORMAT_VERSION})", "upgrade lsgq-compiler")
        return cls(layers={k: LayerSpec.from_dict(v) for k, v in d["layers"].items()},
                   model_class=d.get("model_class", ""), config=d.get("config", {}),
                   version=d.get("version", PLAN_FORMAT_VERSION), attention=d.get("attention", {}))

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
        return cls.from_json(p.read_text())
