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


def test_resume_rows_keeps_finished_rows_and_flags_changed_arguments():
    """Issue 15: --resume with fewer recipes erased rows; other --frames/--time-budget/--option reused stale ones."""
    from lsgq_compiler import QuantConfig
    from lsgq_compiler.vsr.evaluate import resume_rows

    a, b = QuantConfig(recipe="minmax", weight_bits=8, act_bits=8), QuantConfig(recipe="lsgquant", weight_bits=4,
                                                                               act_bits=4)
    args = {"source": "builtin", "frames": 3, "max_lq": None, "clips": ["c1", "c2"]}
    prior = {"args": args, "results": {"bicubic": {}, "fp": {}, a.tag: {}, b.tag: {}},
             "per_clip": {c: {"bicubic": {}, "fp": {}, a.tag: {}, b.tag: {}} for c in ("c1", "c2")},
             "variants": {t: {"config": json.loads(json.dumps(cfg.to_dict()))} for t, cfg in ((a.tag, a), (b.tag, b))}}
    assert resume_rows(prior, args, [a]) == ([a.tag, b.tag], {})  # the lsgquant row is kept though not asked for
    import dataclasses

    carried, stale = resume_rows(prior, args, [dataclasses.replace(a, time_budget_s=5.0)])
    assert carried == [a.tag, b.tag] and "time_budget_s: None then, 5.0 now" in stale[a.tag]
    carried, stale = resume_rows(prior, args, [dataclasses.replace(a, options={"lr": 0.01})])
    assert "options" in stale[a.tag]
    with pytest.raises(ValueError, match="frames: 3 then, 4 now"):
        resume_rows(prior, {**args, "frames": 4}, [a])
    with pytest.raises(ValueError, match="clips"):
        resume_rows(prior, {**args, "clips": ["c1"]}, [a])
    legacy = {k: v for k, v in prior.items() if k != "args"} | {"frames": 8}  # results.json without "args"
    with pytest.raises(ValueError, match="frames: 8 then, 3 now"):
        resume_rows(legacy, args, [a])


class _FakeRunner:
    """Stands in for VSRRunner (no model): the CLI's bookkeeping runs in well under a second."""
    runs: list = []

    def __init__(self, frames=8, tile=32, progress=False):
        self.frames, self.tile, self.progress = frames, tile, progress

    def quantize(self, cfg):
        from types import SimpleNamespace

        from lsgq_compiler.plan import Plan
        from lsgq_compiler.vsr.evaluate import Variant

        _FakeRunner.runs.append(cfg.tag)
        return Variant(cfg.tag, cfg, SimpleNamespace(plan=Plan()), 0.5, {})

    def upscale(self, lq, transformer=None):
        from lsgq_compiler.vsr.tiling import run_tiled

        return run_tiled(lambda t: np.repeat(np.repeat(t, 4, axis=1), 4, axis=2), lq, self.frames, self.tile)


def test_compare_resume_with_fewer_recipes_and_other_options(tmp_path, capsys, monkeypatch):
    """Issue 15: an interrupted compare resumed with other arguments (the real CLI, a stand-in model)."""
    monkeypatch.setattr("lsgq_compiler.vsr.evaluate.VSRRunner", _FakeRunner)
    write_frames(tmp_path / "set" / "clip", _clip(1, 2, 64, 64))
    out = tmp_path / "cmp"
    base = ["compare", "--clips", str(tmp_path / "set"), "--frames", "2", "--out", str(out), "--no-progress"]
    assert main(base + ["--recipes", "minmax", "--bits", "w8a8,w6a6"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["args"]["frames"] == 2 and first["variants"]["minmax-w6a6"]["config"]["weight_bits"] == 6
    assert main(base + ["--recipes", "minmax", "--bits", "w8a8", "--resume"]) == 0  # fewer variants: all kept
    second = json.loads((out / "results.json").read_text())
    assert set(second["results"]) == {"bicubic", "fp", "minmax-w8a8", "minmax-w6a6"}
    assert second["results"]["minmax-w6a6"] == first["results"]["minmax-w6a6"]
    assert _FakeRunner.runs == ["minmax-w8a8", "minmax-w6a6"]  # the resumed run quantized nothing
    capsys.readouterr()
    assert main(base + ["--recipes", "minmax", "--bits", "w8a8", "--resume", "--time-budget", "30"]) == 0
    assert "recomputing minmax-w8a8" in capsys.readouterr().err
    third = json.loads((out / "results.json").read_text())
    assert third["variants"]["minmax-w8a8"]["config"]["time_budget_s"] == 30.0
    assert set(third["results"]) == {"bicubic", "fp", "minmax-w8a8", "minmax-w6a6"}
    assert main(["compare", "--clips", str(tmp_path / "set"), "--frames", "3", "--out", str(out), "--no-progress",
                 "--recipes", "minmax", "--bits", "w8a8", "--resume"]) == 2  # a 2-frame clip at --frames 3: runs
    assert "frames: 2 then, 3 now" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == third  # the refused run changed nothing


def test_eval_runs_clips_shorter_than_frames(tmp_path, monkeypatch, recwarn):
    """Issue 15: `lsgq eval` skipped 2-7-frame clips although >= 2 frames are promised."""
    monkeypatch.setattr("lsgq_compiler.vsr.evaluate.VSRRunner", _FakeRunner)
    for t in (2, 3, 7):
        write_frames(tmp_path / "clips" / f"c{t}", _clip(t, t, 64, 64))
    out = tmp_path / "r.json"
    assert main(["eval", "--clips", str(tmp_path / "clips"), "--bits", "w8a8", "--frames", "8", "--json", str(out),
                 "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["clips"] == 3 and not [w for w in recwarn if "skipping" in str(w.message)]
    assert res["results"]["bicubic"]["psnr"] > 10


def test_cli_checks_output_paths_first_and_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    """Issue 15: --json/--out under a file crashed after the whole evaluation; Ctrl-C printed a traceback."""
    ran = []
    monkeypatch.setattr("lsgq_compiler.vsr.evaluate.VSRRunner", lambda *a, **k: ran.append(1))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["eval", "--json", str(blocker / "r.json"), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err and not ran  # refused before any work
    assert main(["compare", "--out", str(blocker), "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err and not ran

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("lsgq_compiler.vsr.evaluate.VSRRunner", interrupted)
    assert main(["eval", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err
