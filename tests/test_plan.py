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


@pytest.mark.parametrize("field, value, err, match", [
    ("weight_bits", 0, ValueError, "weight_bits=0 is outside 2..8"),
    ("weight_bits", -4, ValueError, "outside 2..8"),
    ("act_bits", 99, ValueError, "act_bits=99 is outside 2..8"),
    ("weight_bits", 4.5, TypeError, "not an integer"),
    ("weight_bits", "4", TypeError, "not an integer"),
    ("weight_bits", True, TypeError, "not an integer"),
    ("rank", -1, ValueError, "rank=-1"),
    ("rotate", "yes", TypeError, "rotate"),
    ("extra", None, TypeError, "extra"),
])
def test_plan_entries_are_validated(field, value, err, match):
    """Issue 15: bad bits were accepted silently (0 kept full precision) or crashed with raw errors."""
    d = _plan().to_dict()
    d["layers"]["blocks.0.attn1.to_q"][field] = value
    with pytest.raises(err, match=match) as e:
        Plan.from_dict(d)
    assert "blocks.0.attn1.to_q" in str(e.value)


def test_plan_structure_is_validated():
    base = _plan().to_dict()
    cases = [
        (lambda d: d["layers"]["proj_out"].pop("in_features"), ValueError, "proj_out.*in_features"),
        (lambda d: d.update(layers=list(d["layers"].values())), TypeError, "not a mapping"),
        (lambda d: d["layers"].update(proj_out=None), TypeError, "proj_out.*NoneType"),
        (lambda d: d.update(version="1"), TypeError, "version '1'"),
        (lambda d: d.update(version=2), ValueError, "newer"),
        (lambda d: d["layers"]["proj_out"].update(module_path="proj_in"), ValueError, "key and the module_path"),
    ]
    for edit, err, match in cases:
        d = json.loads(json.dumps(base))
        edit(d)
        with pytest.raises(err, match=match):
            Plan.from_dict(d)
