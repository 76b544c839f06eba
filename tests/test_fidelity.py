"""The fidelity floor: raise the most sensitive layers until the measured model-output SQNR holds."""
from __future__ import annotations

import json
import math

import pytest

from lsgq_compiler.fidelity import raise_until_floor, sensitivity_order
from lsgq_compiler.plan import LayerSpec, Plan


def toy_plan(n: int = 10) -> Plan:
    layers = {f"l{i}": LayerSpec(f"l{i}", 16, 16, weight_bits=4, act_bits=4, sensitivity=float(2 ** (n - i)))
              for i in range(n)}
    layers["head"] = LayerSpec("head", 16, 16)  # full precision: never touched
    return Plan(layers=layers)


def toy_measure(plan: Plan, log: list) -> float:
    """SQNR of a model whose output error is the sum of the layers' errors: sensitivity * 4^-(bits-4),
    0 in full precision (a stand-in for compile + measure)."""
    log.append(plan)
    err = sum(s.sensitivity * 4.0 ** -((s.weight_bits or 99) - 4) for s in plan.layers.values() if s.quantized)
    return 10 * math.log10(1e4 / err) if err else float("inf")


@pytest.mark.parametrize("floor", [0.0, 5.0, 8.0, 12.0, 18.0, 40.0, 80.0])
def test_smallest_k_bounded_rounds_deterministic(floor):
    base = toy_plan()
    before = base.to_json()
    log: list = []
    r = raise_until_floor(base, lambda p: toy_measure(p, log), floor)
    assert base.to_json() == before  # the given plan is never modified
    assert r.met and r.sqnr_db >= floor and len(log) == len(r.rounds)
    assert len(r.rounds) <= 1 + 2 * 2 * (math.ceil(math.log2(10)) + 1)
    raised = [x["layer"] for x in r.raised]
    assert raised == sensitivity_order(base)[:len(raised)]  # most sensitive first, a prefix of the ranking
    # minimal: raising one layer fewer misses the floor (measured in the search)
    if r.raised and all(x["to"] == "W8A8" for x in r.raised):
        k = len(raised)
        fewer = [x for x in r.rounds if x["phase"] in (("8-bit", "base") if k > 1 else ("base",))
                 and x["k"] == k - 1]
        assert fewer and not fewer[0]["passed"]
    assert r.plan.layers["head"].fmt == "FP"
    r2 = raise_until_floor(toy_plan(), lambda p: toy_measure(p, []), floor)
    assert r2.plan.to_json() == r.plan.to_json() and r2.rounds == r.rounds


def test_full_precision_phase_and_unreachable():
    # 8 bits everywhere gives 10 log10(1e4 / (2046 / 256)) = 31 dB: a 40 dB floor needs full precision
    r = raise_until_floor(toy_plan(), lambda p: toy_measure(p, []), 40.0)
    assert r.met and any(x["to"] == "FP" for x in r.raised)
    assert r.plan.layers["l0"].fmt == "FP" and r.plan.layers["l0"].rank == 0
    r = raise_until_floor(toy_plan(), lambda p: 20.0, 30.0)  # nothing helps
    assert not r.met and all(s.fmt == "FP" for s in r.plan.layers.values())


def test_needs_sensitivities():
    p = toy_plan()
    p.layers["l3"].sensitivity = None
    with pytest.raises(ValueError, match="no sensitivity"):
        raise_until_floor(p, lambda p: 0.0, 10.0)


def test_floor_on_tiny_wan_beats_all_8bit_size(tmp_path):
    """`lsgq quantize --min-fidelity-db`: the floor holds on the held-back batches, measured, with a
    smaller checkpoint than all-8-bit."""
    from lsgq_compiler.cli import main
    from lsgq_compiler.record import record_inputs
    from tests.conftest import tiny_wan
    from tests.test_quantize_cli import FAST, files
    from tests.test_record import sample_wan

    m = tiny_wan()
    m.save_pretrained(tmp_path / "transformer")
    with record_inputs(m, tmp_path / "calib.safetensors", max_calls=8):
        sample_wan(m)

    def run(out, *extra):
        assert main(["quantize", "--model", str(tmp_path / "transformer"), "--calib", str(tmp_path / "calib.safetensors"),
                     "--out", str(tmp_path / out), "--no-progress", "--options", FAST] + list(extra)) == 0
        return json.loads((tmp_path / out / "report" / "summary.json").read_text())

    w8 = run("w8", "--bits", "w8a8")
    floor = 36.0  # W4A4 measures ~33 dB, W8A8 ~58 dB on these held-back batches
    s = run("floor", "--bits", "w4a4", "--min-fidelity-db", str(floor))
    assert s["base_sqnr_db"] < floor <= s["sqnr_db"], s  # raised, and the floor met by measurement
    assert s["floor"]["raised"] and s["floor"]["met"]
    assert s["checkpoint_bytes"] < w8["checkpoint_bytes"], (s["checkpoint_bytes"], w8["checkpoint_bytes"])
    assert "W4A4" in s["formats"] and "W8A8" in s["formats"]
    md = (tmp_path / "floor" / "report" / "summary.md").read_text()
    assert "layers raised" in md and s["floor"]["raised"][0]["layer"] in md
    # the summary's SQNR is the measured one: held-back batches, re-measured from the written plan
    from lsgq_compiler import Plan, QuantConfig, compile_quantized, load_inputs
    from lsgq_compiler.quantize import sqnr_db

    batches = load_inputs(tmp_path / "calib.safetensors")
    plan = Plan.load(tmp_path / "floor" / "report" / "plan.json")
    qm = compile_quantized(m, batches[0], QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4,
                                                      options=json.loads(FAST)),
                           calib_data=batches[:6], plan=plan, progress=False)
    ref = [m(**b, return_dict=False)[0].detach() for b in batches[6:]]
    out = [qm(**b).detach() for b in batches[6:]]
    assert abs(sqnr_db(ref, out) - s["sqnr_db"]) < 1e-3  # (training on another call: float noise only)
    assert files(tmp_path / "floor" / "checkpoint")
