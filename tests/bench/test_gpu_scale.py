"""bench/gpu_scale.py's CPU-testable parts: which linears are quantized, checkpoint size
arithmetic, the small-M guard for int8, merging of --variants subset runs, and the breakdown plot."""
import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_scale", ROOT / "bench" / "gpu_scale.py")
gs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gs)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_out = nn.Linear(8, 8)  # in the keep-fp set
        self.block = nn.Linear(8, 16)
        self.temb = nn.Linear(8, 8)

    def forward(self, hidden_states, t, return_dict=False):
        return (self.proj_out(self.block(hidden_states)[..., :8]) + self.temb(t)[:, None],)


def test_filters_and_checkpoint_bytes():
    m = Toy()
    assert not gs.linear_filter(m.proj_out, "proj_out") and gs.linear_filter(m.block, "block")
    # block (16x8) and temb (8x8) quantized: weights at 1 byte + fp32 row scales; the rest bf16
    other = sum(p.numel() for n, p in m.named_parameters() if n not in ("block.weight", "temb.weight"))
    assert gs.checkpoint_bytes(m, 1) == (16 * 8 + 4 * 16) + (8 * 8 + 4 * 8) + 2 * other
    # 4-bit, groups of 4: half a byte per weight + one fp32 scale per group
    assert gs.checkpoint_bytes(m, 0.5, group=4) == (16 * 4 + 4 * 16 * 2) + (8 * 4 + 4 * 8 * 2) + 2 * other


def test_small_m_linears_finds_single_row_projections():
    m = Toy()
    inputs = {"hidden_states": torch.randn(1, 32, 8), "t": torch.randn(1, 8)}
    assert gs.small_m_linears(m, inputs) == {"temb"}


def test_subset_runs_merge_and_full_runs_replace(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    args = types.SimpleNamespace(part="speed", model="wan-1.3b", small=True, variants="", out=str(tmp_path))
    f = gs.write_result(args, {"results": {"bf16": {"median_ms": 10.0}, "w8a8-fp8": {"median_ms": 8.0}}}, "GPU-X")
    args.variants = "w4a8"
    gs.write_result(args, {"results": {"bf16": {"median_ms": 11.0}, "w4a8": {"median_ms": 12.0}}}, "GPU-X")
    res = json.loads(f.read_text())["results"]
    assert res == {"bf16": {"median_ms": 11.0}, "w8a8-fp8": {"median_ms": 8.0}, "w4a8": {"median_ms": 12.0}}
    # another GPU's results are never merged
    gs.write_result(args, {"results": {"bf16": {"median_ms": 1.0}}}, "GPU-Y")
    assert json.loads(f.read_text())["results"] == {"bf16": {"median_ms": 1.0}}
    assert not list(tmp_path.glob("*.tmp"))


def test_plot_breakdown_draws_every_variant(tmp_path):
    res = {"model": "toy", "gpu": "none", "video_tokens": 10, "results": {
        "bf16": {"median_ms": 100.0, "speedup_vs_bf16_compile": 1.0,
                 "op_ms": {"linear_gemm": 30.0, "attention": 60.0, "other": 10.0}},
        "fast": {"median_ms": 70.0, "speedup_vs_bf16_compile": 1.43,
                 "op_ms": {"linear_gemm": 20.0, "attention": 45.0, "other": 5.0}},
        "simulated": {"median_ms": 900.0, "speedup_vs_bf16_compile": 0.11,
                      "op_ms": {"linear_gemm": 30.0, "attention": 60.0, "other": 810.0}},
        "broken": {"error": "no kernel"}}}
    (tmp_path / "gpu_scale_speed_toy.json").write_text(json.dumps(res))
    out = gs.plot_breakdown(tmp_path)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp.png"))


def test_plot_breakdown_without_results_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run --part speed first"):
        gs.plot_breakdown(tmp_path)


def test_wan14b_config_has_the_published_size_and_its_own_calib_file(tmp_path, monkeypatch):
    """The Wan2.1-14B config (``--part calib --model wan-14b``) builds a 14.3 B-parameter transformer
    (on the meta device: no memory) and its stage table goes to its own JSON, not the 5B's."""
    import diffusers

    with torch.device("meta"):
        m = diffusers.WanTransformer3DModel(**gs.CONFIGS["wan-14b"]["cfg"])
    assert 14.0e9 < sum(p.numel() for p in m.parameters()) < 14.6e9
    monkeypatch.delenv("OUT", raising=False)
    args = types.SimpleNamespace(part="calib", model="wan-14b", small=False, variants="", out=str(tmp_path))
    assert gs.write_result(args, {"total_s": 1.0}, "GPU-X").name == "gpu_scale_calib_wan-14b.json"
