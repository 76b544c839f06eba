"""The greedy routine shared by BitAllocation and VaSMP."""
from lsgq_compiler.passes.bit_allocation import allocate_bits, greedy_upgrade
from lsgq_compiler.passes.vasmp import vasmp_bits


def test_greedy_upgrade_respects_budget_and_prefers_largest_gain():
    params = {"a": 100, "b": 100, "c": 200}
    red = {"a": 1.0, "b": 5.0, "c": 4.0}  # per added bit: b 5/200, c 4/400, a 1/200: b twice, then no room
    bits = greedy_upgrade({"a": 4, "b": 4, "c": 4}, params, (4, 6, 8), 5.0, lambda k, b, nb: red[k])
    assert sum(params[k] * bits[k] for k in bits) <= 5.0 * sum(params.values())
    assert bits == {"a": 4, "b": 8, "c": 4}


def test_greedy_upgrade_ties_break_by_order_and_input_not_mutated():
    start = {"x": 4, "y": 4}
    bits = greedy_upgrade(start, {"x": 10, "y": 10}, (4, 8), 6.0, lambda k, b, nb: 1.0)
    assert bits == {"x": 8, "y": 4} and start == {"x": 4, "y": 4}


def test_allocators_spend_within_budget():
    params = {f"l{i}": 64 * (i + 1) for i in range(6)}
    bits = allocate_bits({k: float(i) for i, k in enumerate(params)}, params, (4, 6, 8), 5.0, dict.fromkeys(params, 4))
    assert sum(params[k] * bits[k] for k in bits) <= 5.0 * sum(params.values())
    assert bits["l5"] >= bits["l0"]  # the most sensitive layer never gets fewer bits
    vbits, _ = vasmp_bits({k: 10.0 ** i for i, k in enumerate(params)}, params, 4.0, (3, 4, 5))
    assert sum(params[k] * vbits[k] for k in vbits) <= 4.0 * sum(params.values())
    assert vbits["l5"] >= vbits["l0"]
