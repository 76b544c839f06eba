"""QuantVSR's STCA: complexity measures, rank allocation rules, and the pass on the tiny Wan."""
import torch
from zoo_support import capture_once  # noqa: F401  (autouse fixture)

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.passes.stca import allocate_ranks, spatial_complexity, temporal_complexity


def test_complexities_on_known_clips():
    flat = torch.ones(3, 4, 4, 8)
    assert spatial_complexity(flat) == 0.0 and temporal_complexity(flat) == 0.0
    ramp = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 4, 4, 8)  # each frame +1
    assert temporal_complexity(ramp) == 1.0 and temporal_complexity(ramp[:1]) == 0.0
    noisy = torch.randn(2, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    assert abs(spatial_complexity(noisy) - 1.0) < 0.1


def test_ranks_are_multiples_of_8_within_16_and_64():
    g = torch.Generator().manual_seed(0)
    stats = {f"l{i}": [(float(a), float(b)) for a, b in torch.rand(40, 2, generator=g) * (i + 1)] for i in range(12)}
    for step in (1, 2, 8):
        ranks = allocate_ranks(stats, step=step)
        assert all(16 <= r <= 64 and r % 8 == 0 for r in ranks.values())
    ranks = allocate_ranks(stats, step=8)
    assert ranks["l11"] == 64 and ranks["l0"] == 16  # most complex up to the cap, least stays at the floor
    assert allocate_ranks({"a": [(0.0, 0.0)] * 5, "b": [(1.0, 1.0)] * 5}, step=1) == {"a": 16, "b": 24}


def test_stca_pass_sets_ranks_on_tiny_wan():
    m, inp = tiny_wan(), wan_inputs(frames=2, size=8)
    calib = [wan_inputs(frames=2, size=8, seed=s) for s in (2, 3)]
    cfg = QuantConfig(recipe="quantvsr", weight_bits=4, act_bits=4,
                      options={"rank_step": 8, "lowrank_iters": 0, "lba_iters": 0})
    qm = compile_quantized(m, inp, cfg, calib_data=calib, progress=False)
    assert qm.info["notes"]["stca"]["grid"] == [2, 4, 4]  # 2 frames of 8x8 latents, patch (1, 2, 2)
    q = qm.plan.quantized_layers()
    assert all(16 <= s.extra["stca_rank"] <= 64 and s.extra["stca_rank"] % 8 == 0 for s in q)
    assert len({s.extra["stca_rank"] for s in q}) > 1
    measured = [s for s in q if "stca" in s.extra]
    assert measured and not any("attn2.to_k" in s.module_path for s in measured)  # text tokens: not measured
    for path, mod in qm.quant_linears().items():
        if mod.spec.quantized:  # applied rank capped at half the toy width
            assert mod.lr_down.shape[0] == mod.spec.rank == min(mod.spec.extra["stca_rank"], 16)
