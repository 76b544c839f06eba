import json

import pytest

from lsgq_compiler.plan import LayerSpec, Plan


def _plan():
    return Plan(layers={"blocks.0.attn1.to_q": LayerSpec("blocks.0.attn1.to_q", 32, 32, 4, 4, sensitivity=0.5,
                                                          tier="full", rank=2, rotate=True, extra={"a": [1, 2]}),
                        "proj_out": LayerSpec("proj_out", 32, 16)}, model_class="Wan", config={"recipe": "minmax"})


def test_json_roundtrip(tmp_path):
    p = _plan()
    assert Plan.from_json(p.to_json()) == p
    path = p.save(tmp_path / "plan.json")
    assert Plan.load(path) == p
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    assert p.summary()["formats"] == {"W4A4": 1, "FP": 1}


def test_bad_plan_files(tmp_path):
    f = tmp_path / "plan.json"
    f.write_text(_plan().to_json()[:50])
    with pytest.raises(ValueError, match="not valid JSON"):
        Plan.load(f)
    f.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a plan"):
        Plan.load(f)
    d = _plan().to_dict()
    d["layers"]["proj_out"]["bogus"] = 1
    with pytest.raises(ValueError, match="unknown fields"):
        Plan.from_dict(d)
    with pytest.raises(ValueError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
