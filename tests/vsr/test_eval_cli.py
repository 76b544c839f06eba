"""`lsgq eval` on a folder it has never seen: odd frame sizes, a bad clip skipped, bad folders refused."""
import json

import numpy as np
import pytest

from lsgq_compiler.cli import main
from lsgq_compiler.vsr.data import write_frames


def _clip(seed, t, h, w):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 8, w // 8, 3)).astype(np.float32)
    frames = [np.kron(np.roll(base, i, axis=1), np.ones((8, 8, 1))) for i in range(t)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_eval_on_unseen_folder_with_a_bad_clip(tmp_path):
    clips = tmp_path / "clips"
    write_frames(clips / "good", _clip(0, 3, 64, 88))  # not the training size, 3 frames
    gray = clips / "gray"
    gray.mkdir()
    import cv2

    for i in range(2):
        cv2.imwrite(str(gray / f"{i}.png"), np.full((64, 64), 100, np.uint8))
    out = tmp_path / "res.json"
    with pytest.warns(UserWarning, match="skipping gray"):
        rc = main(["eval", "--clips", str(clips), "--recipes", "minmax", "--bits", "w8a8", "--frames", "3",
                   "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["clips"] == 1 and set(res["results"]) == {"bicubic", "fp", "minmax-w8a8"}
    r = res["results"]["minmax-w8a8"]
    assert r["psnr_vs_fp"] > 35.0 and 0.0 < r["ssim"] <= 1.0 and r["warp_error"] >= 0.0


def test_eval_refuses_empty_folder_and_bad_bits(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--clips", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err.lower()
    assert main(["eval", "--clips", str(tmp_path / "empty"), "--bits", "w4", "--no-progress"]) == 2
    assert "w4a4" in capsys.readouterr().err


def test_compare_two_sets_share_variants_and_resume(tmp_path, capsys):
    for name, seed in (("setA", 1), ("setB", 2)):
        write_frames(tmp_path / name / "clip", _clip(seed, 3, 64, 64))
    sets = f"{tmp_path / 'setA'},{tmp_path / 'setB'}"
    out = tmp_path / "cmp"
    base = ["compare", "--clips", sets, "--recipes", "minmax", "--frames", "3", "--out", str(out), "--no-progress"]
    assert main(base + ["--bits", "w8a8"]) == 0
    first = {n: json.loads((out / n / "results.json").read_text()) for n in ("setA", "setB")}
    for n in ("setA", "setB"):
        assert (out / n / "table.md").exists() and (out / n / "chart.png").exists()
        assert set(first[n]["results"]) == {"bicubic", "fp", "minmax-w8a8"}
    # one quantization serves both sets: the same variant record (time) in each
    assert first["setA"]["results"]["minmax-w8a8"]["quant_time_s"] == first["setB"]["results"]["minmax-w8a8"][
        "quant_time_s"]
    assert main(base + ["--bits", "w8a8,w6a6", "--resume"]) == 0
    second = json.loads((out / "setA" / "results.json").read_text())
    assert set(second["results"]) == {"bicubic", "fp", "minmax-w8a8", "minmax-w6a6"}
    # the resumed variant was not run again: its metrics and time are carried over exactly
    assert second["results"]["minmax-w8a8"] == first["setA"]["results"]["minmax-w8a8"]
    assert main(base + ["--bits", "w8a8", "--time-budget", "-1"]) == 2
    assert "--time-budget" in capsys.readouterr().err


def test_lowrank_share_is_parameter_weighted_and_tabled():
    from lsgq_compiler.vsr.evaluate import lowrank_share
    from lsgq_compiler.plan import LayerSpec, Plan
    from lsgq_compiler.report import table1_markdown

    plan = Plan(layers={"a": LayerSpec("a", 100, 100, weight_bits=4, act_bits=4, rank=1),
                        "b": LayerSpec("b", 100, 300, weight_bits=4, act_bits=4, rank=0),
                        "c": LayerSpec("c", 50, 50)})  # full precision: not counted
    assert lowrank_share(plan) == pytest.approx(200 / 40000)
    res = {"ground_truth": True, "results": {
        "fp": {"psnr": 25.0, "ssim": 0.7, "warp_error": 0.01}, "bicubic": {"psnr": 23.0, "ssim": 0.6, "warp_error": 0.02},
        "svdquant-w4a4": {"psnr": 24.9, "ssim": 0.69, "warp_error": 0.012, "psnr_vs_fp": 40.0, "quant_time_s": 5.0,
                          "lowrank_share": 0.1667}}}
    table = table1_markdown(res)
    assert "low-rank share" in table and "| W4A4 | svdquant |" in table and "16.7%" in table


def test_eval_with_8bit_attention(tmp_path):
    """--attention-bits 8: the variant is named -attn8, its attention layers run 8-bit, and the
    frames stay close to full precision."""
    clips = tmp_path / "clips"
    write_frames(clips / "a", _clip(1, 3, 64, 64))
    out = tmp_path / "res.json"
    rc = main(["eval", "--clips", str(clips), "--recipes", "minmax", "--bits", "w8a8", "--frames", "3",
               "--attention-bits", "8", "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    r = res["results"]
    assert "minmax-w8a8-attn8" in r and r["minmax-w8a8-attn8"]["psnr_vs_fp"] > 35.0
    att = res["variants"]["minmax-w8a8-attn8"]["notes"]["attention"]
    assert any(a["quantized"] and a["sqnr_db"] >= 25.0 for a in att.values())


def test_attention_bits_in_variant_names():
    from lsgq_compiler.vsr.evaluate import parse_variants

    cfgs = parse_variants("minmax", "w4a4,w8a8", attention_bits=8)
    assert [c.tag for c in cfgs] == ["minmax-w4a4-attn8", "minmax-w8a8-attn8"]
    assert all(c.attention_bits == 8 for c in cfgs)
    assert [c.tag for c in parse_variants("minmax", "w8a8")] == ["minmax-w8a8"]
