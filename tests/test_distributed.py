"""Calibration and QAO across processes (#21): gloo ranks spawned on the CPU give the plan bytes
and every trained tensor of one process; the deterministic splits behind it."""
from __future__ import annotations

import datetime
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lsgq_compiler import distributed as D

OPTIONS = {"full_iters": 12, "light_iters": 4, "probes": 2, "qao_iters": 60,  # a shared budget: several waves
           "observe_tokens": 16}  # fewer than a call has (32): the token sample depends on its seed


# ------------------------------------------------------------------------------- the splits alone
def test_clip_shard_contiguous_balanced_in_clip_order():
    for n in range(8):
        for size in range(1, 5):
            shards = [D.clip_shard(n, r, size) for r in range(size)]
            assert [i for s in shards for i in s] == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_assign_layers_largest_first_ties_by_name():
    costs = {"d": 5, "a": 10, "c": 5, "b": 10, "e": 1}
    owner = D.assign_layers(costs, 2)
    assert owner == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}
    assert D.assign_layers(dict(reversed(costs.items())), 2) == owner  # insertion order does not matter
    wide = D.assign_layers({"x": 3, "y": 2}, 5)  # more ranks than layers: the others get none
    assert wide == {"x": 0, "y": 1}
    assert D.assign_layers(costs, 1) == dict.fromkeys(costs, 0)


def _one_process_shares(caps, total, used):
    """QAO's sequential rule: layer i gets min(cap, what the earlier layers left)."""
    left, out = total, []
    for i, c in enumerate(caps):
        share = max(0, min(c, left)) if left is not None else c
        out.append(share)
        if left is not None:
            left -= used(i, share)
    return out


def test_budget_waves_give_every_layer_its_one_process_share():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 12)
        caps = [rng.choice([0, 4, 12, 30]) for _ in range(n)]
        fixed = [rng.random() < 0.5 for _ in range(n)]
        total = rng.choice([None, 0, 10, 40, 100, 1000])
        draw = [rng.random() for _ in range(n)]

        def used(i, share):  # a converging layer may stop early, a fixed one uses its share
            return share if fixed[i] else int(round(draw[i] * share))

        want = _one_process_shares(caps, total, used)
        got, pos, left, waves = [], 0, total, 0
        while pos < n:
            wave = D.budget_wave(caps[pos:], left, fixed[pos:])
            assert wave, "a wave holds at least one layer"
            for j, share in enumerate(wave, pos):
                if left is not None:
                    left -= used(j, share)
            got += wave
            pos += len(wave)
            waves += 1
        assert got == want
        if total is None:
            assert waves == 1


# ---------------------------------------------------------------------------- spawned gloo ranks
def _mlp_job():
    """Two linears, two clips: a world of 3 has more ranks than layers and than clips."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)).eval()
    clip = lambda s: (torch.randn(1, 32, 64, generator=torch.Generator().manual_seed(s)),)  # noqa: E731
    return m, clip(0), [clip(1), clip(2)]


def _wan_job():
    from conftest import tiny_wan, wan_inputs

    return tiny_wan(), wan_inputs(frames=2, size=8), [wan_inputs(frames=2, size=8, seed=s) for s in range(3)]


def _compile(job) -> dict:
    from lsgq_compiler import QuantConfig, compile_quantized

    model, example, calib = job()
    config = QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, options=OPTIONS)
    qm = compile_quantized(model, example, config, calib_data=calib, progress=False)
    out = qm(*example) if isinstance(example, tuple) else qm(**example)
    stats = {f"{path}/{k}": v for path, m in qm.quant_linears().items() for k, v in _stats(m.calib_stats).items()}
    return {"plan": qm.plan.to_json().encode(), "state": qm.quant_state_dict(), "stats": stats, "out": out.detach()}


def _stats(st) -> dict[str, torch.Tensor]:
    """Every field of a layer's calibration statistics, as tensors."""
    out = {k: getattr(st, k) for k in ("absmax", "lo", "hi", "sum", "sumsq")}
    out |= {f"{k}.{i}": t for k in ("samples", "call_means", "call_absmax") for i, t in enumerate(getattr(st, k))}
    out |= {f"probe_sums.{k}": torch.tensor(v, dtype=torch.float64) for k, v in st.probe_sums.items()}
    return out | {"count": torch.tensor([st.count, st.probe_count, len(st.samples)])}


def _distributed(rank: int, size: int, store: str) -> dict:
    """Both jobs compiled by ``size`` gloo ranks; which layers this rank trained, whether the
    calibration statistics were merged (not observed replicated)."""
    from lsgq_compiler.passes import qao

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=120))
    trained, merged = [], []
    train_layer, merge = qao.train_layer, D.merge_observed

    def count_train(m, *a, **k):
        trained.append(m.spec.module_path)
        return train_layer(m, *a, **k)

    def count_merge(*a, **k):
        res = merge(*a, **k)
        merged.append(res is not None)
        return res

    qao.train_layer, D.merge_observed = count_train, count_merge
    res = {}
    try:
        for name, job in (("wan", _wan_job), ("mlp", _mlp_job)):
            res[name] = {**_compile(job), "trained": list(trained), "merged": list(merged)}
            trained.clear()
            merged.clear()
        if size == 3:  # ranks given different calibration data: a clear error on every rank, no hang
            from lsgq_compiler import QuantConfig, compile_quantized

            model, example, calib = _mlp_job()
            try:
                compile_quantized(model, example, QuantConfig(recipe="lsgquant", options=OPTIONS),
                                  calib_data=calib[rank % 2:], progress=False)
            except RuntimeError as e:
                res["mismatch"] = str(e)
    finally:
        qao.train_layer, D.merge_observed = train_layer, merge
        dist.destroy_process_group()
    return res


def _process(i: int, folder: str) -> None:
    """Three processes: 0 and 1 form a world of 2 while 2 runs the one-process reference
    (no process group), then all three form a world of 3."""
    torch.set_num_threads(1)
    if i == 2:
        torch.save({"wan": _compile(_wan_job), "mlp": _compile(_mlp_job)}, f"{folder}/world1.pt")
    else:
        torch.save(_distributed(i, 2, f"{folder}/store2"), f"{folder}/world2.rank{i}.pt")
    torch.save(_distributed(i, 3, f"{folder}/store3"), f"{folder}/world3.rank{i}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_process, args=(str(folder),), nprocs=3)
    return {1: [torch.load(folder / "world1.pt")],
            **{size: [torch.load(folder / f"world{size}.rank{r}.pt") for r in range(size)] for size in (2, 3)}}


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("job", ["wan", "mlp"])
def test_every_rank_gets_the_one_process_plan_bytes_and_tensors(runs, size, job):
    ref = runs[1][0][job]
    assert ref["state"]
    for rank, res in enumerate(runs[size]):
        got = res[job]
        assert got["plan"] == ref["plan"], f"rank {rank}: plan JSON differs"
        for what in ("state", "stats"):  # trained tensors; merged calibration statistics (sums bit for bit)
            assert got[what].keys() == ref[what].keys()
            bad = [k for k in ref[what] if not torch.equal(got[what][k], ref[what][k])]
            assert not bad, f"rank {rank}: {len(bad)} {what} tensors differ, e.g. {bad[:3]}"
        assert torch.equal(got["out"], ref["out"])


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("job", ["wan", "mlp"])
def test_each_layer_trains_on_exactly_one_rank(runs, size, job):
    per_rank = [res[job]["trained"] for res in runs[size]]
    flat = [p for t in per_rank for p in t]
    assert len(flat) == len(set(flat)), "a layer trained on two ranks"
    assert flat, "nothing trained: the test would not see a wrong broadcast"
    if job == "wan":
        assert all(per_rank), "some rank trained nothing: QAO was not split"
    else:  # two layers, three ranks: one rank has no layer (and no clip)
        assert sum(not t for t in per_rank) >= size - 2
    assert all(res[job]["merged"] == [True] for res in runs[size]), "calibration was not split and merged"


def test_ranks_with_different_calibration_data_all_raise(runs):
    for res in runs[3]:
        assert "ranks [1] differ from rank 0 in the compile job" in res["mismatch"]
