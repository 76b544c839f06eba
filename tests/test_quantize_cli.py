"""``lsgq quantize``: a diffusers folder + recorded inputs -> a checkpoint and a report; resume; errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lsgq_compiler
from lsgq_compiler import quantize as qz
from lsgq_compiler.cli import main
from lsgq_compiler.record import record_inputs
from tests.conftest import cogvideox_inputs, tiny_cogvideox, tiny_wan
from tests.test_record import sample_wan

FAST = json.dumps({"full_iters": 5, "light_iters": 2, "sensitivity": "qerror"})


@pytest.fixture(scope="module")
def wan_job(tmp_path_factory):
    """A tiny random-weight Wan saved with diffusers' save_pretrained, and 8 calls recorded from a
    sampling loop (2 clips x 4 steps)."""
    d = tmp_path_factory.mktemp("wan")
    m = tiny_wan()
    m.save_pretrained(d / "transformer")
    with record_inputs(m, d / "calib.safetensors", max_calls=8):
        sample_wan(m)
    return d / "transformer", d / "calib.safetensors"


@pytest.fixture(scope="module")
def cog_job(tmp_path_factory):
    d = tmp_path_factory.mktemp("cog")
    m = tiny_cogvideox()
    m.save_pretrained(d / "transformer")
    g = torch.Generator().manual_seed(3)
    with record_inputs(m, d / "calib.safetensors"), torch.no_grad():
        for t in (999, 700, 400, 100):
            inp = cogvideox_inputs(seed=t)
            inp["hidden_states"] = torch.randn(inp["hidden_states"].shape, generator=g)
            m(**{**inp, "timestep": torch.tensor([t])}, return_dict=False)
    return d / "transformer", d / "calib.safetensors"


def quantize(model, calib, out, *extra) -> int:
    args = ["quantize", "--model", str(model), "--out", str(out), "--no-progress"]
    if calib is not None:
        args += ["--calib", str(calib)]
    return main(args + list(extra))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_wan_end_to_end(wan_job, tmp_path, capsys):
    model, calib = wan_job
    assert quantize(model, calib, tmp_path / "o", "--recipe", "lsgquant", "--bits", "w4a4", "--target", "sim",
                    "--options", FAST) == 0
    out = tmp_path / "o"
    s = json.loads((out / "report" / "summary.json").read_text())
    assert s["calibration_batches"] == 6 and s["held_back_batches"] == 2
    assert s["sqnr_db"] > 25, s["sqnr_db"]  # W4A4 LSGQuant on tiny Wan, held-back batches: ~33 dB
    assert s["formats"]["W4A4"] == 20
    for f in ("plan.json", "plan.png", "summary.md"):
        assert (out / "report" / f).stat().st_size > 100
    assert lsgq_compiler.Plan.load(out / "report" / "plan.json").summary()["quantized"] == 20
    md = (out / "report" / "summary.md").read_text()
    assert "held-back" in md and "| compile |" in md and "peak RSS" in md
    assert not (out / qz.STAGES_DIR).exists()
    assert "wrote" in capsys.readouterr().out
    # the checkpoint runs through the deploy loader (when the deploy module is in this install)
    if not hasattr(lsgq_compiler, "from_pretrained"):
        pytest.skip("lsgq_compiler.from_pretrained (deploy, #16) not in this install yet")
    loaded = lsgq_compiler.from_pretrained(str(out / "checkpoint"), device="cpu")
    batch = lsgq_compiler.load_inputs(calib)[-1]
    with torch.no_grad():
        ref = tiny_wan()(**batch, return_dict=False)[0]
        y = loaded(**batch, return_dict=False)[0]
    assert 10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum()) > 25
    assert s["verify"]["sqnr_vs_compiled_db"] > 30


def test_cogvideox_minmax(cog_job, tmp_path):
    model, calib = cog_job
    assert quantize(model, calib, tmp_path / "o", "--recipe", "minmax", "--bits", "w8a8") == 0
    s = json.loads((tmp_path / "o" / "report" / "summary.json").read_text())
    assert s["model_class"] == "CogVideoXTransformer3DModel" and s["held_back_batches"] == 1
    assert s["sqnr_db"] > 30, s["sqnr_db"]  # W8A8 minmax: ~40 dB


def test_size_budget(wan_job, tmp_path):
    model, calib = wan_job
    # estimates: 44.3 kB all 4-bit, 56.5 kB all 8-bit; 50 kB lets some layers have more bits
    assert quantize(model, calib, tmp_path / "a", "--bits", "w4a4", "--options", FAST, "--size-budget",
                    "0.00005") == 0
    s = json.loads((tmp_path / "a" / "report" / "summary.json").read_text())
    assert s["estimated_bytes"] <= 0.00005e9 and 4.0 < s["avg_weight_bits"] < 8.0
    assert quantize(model, calib, tmp_path / "b", "--bits", "w4a4", "--options", FAST, "--size-budget",
                    "0.00004") == 2  # below the all-4-bit size: a clear error


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_bytes(wan_job, tmp_path, monkeypatch):
    model, calib = wan_job
    args = ("--bits", "w4a4", "--options", FAST, "--size-budget", "0.00005")  # two compiles: base, budget
    assert quantize(model, calib, tmp_path / "clean", *args) == 0

    def die_after(stage):
        def hook(name):
            if name == stage:
                raise Interrupt(name)
        monkeypatch.setattr(qz, "_stage_done", hook)

    run = tmp_path / "run"
    die_after("compile")
    with pytest.raises(Interrupt):
        quantize(model, calib, run, *args)
    assert not (run / "checkpoint").exists()
    assert len(list((run / qz.STAGES_DIR).glob("compile-*.safetensors"))) == 1
    die_after("save")  # resumed, and interrupted again after writing the checkpoint
    with pytest.raises(Interrupt):
        quantize(model, calib, run, *args)
    assert len(list((run / qz.STAGES_DIR).glob("compile-*.safetensors"))) == 2
    die_after(None)
    assert quantize(model, calib, run, *args) == 0
    s = json.loads((run / "report" / "summary.json").read_text())
    assert s["restored_compiles"] == 2 and s["compiles"] == 0
    assert files(run / "checkpoint") == files(tmp_path / "clean" / "checkpoint")
    assert not (run / qz.STAGES_DIR).exists()
    # another run's leftovers in OUT are refused, not mixed in
    (run / qz.STAGES_DIR).mkdir()
    (run / qz.STAGES_DIR / "job.json").write_text(json.dumps({"key": "other"}))
    assert quantize(model, calib, run, *args) == 2  # (--restart discards them)


def test_error_not_a_diffusers_folder(wan_job, tmp_path, capsys):
    _, calib = wan_job
    (tmp_path / "empty").mkdir()
    assert quantize(tmp_path / "empty", calib, tmp_path / "o") == 2
    assert "not a diffusers model folder" in capsys.readouterr().err
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "pipe" / "transformer" / "config.json").write_text("{}")
    assert quantize(tmp_path / "pipe", calib, tmp_path / "o") == 2
    assert "pipeline folder" in (err := capsys.readouterr().err) and "transformer" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"_class_name": "NotAModel"}))
    assert quantize(tmp_path / "bad", calib, tmp_path / "o") == 2
    assert "not a diffusers model class" in capsys.readouterr().err
    assert quantize(tmp_path / "missing", calib, tmp_path / "o") == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoint").exists()


def test_error_calibration_from_another_model(wan_job, cog_job, tmp_path, capsys):
    model, calib = wan_job
    assert quantize(model, cog_job[1], tmp_path / "o") == 2  # recorded from CogVideoX
    assert "recorded from a CogVideoXTransformer3DModel" in capsys.readouterr().err
    other = tiny_wan()
    other2 = type(other).from_config({**other.config, "in_channels": 8, "out_channels": 8})
    rec = tmp_path / "other.safetensors"
    with record_inputs(other2, rec), torch.no_grad():
        other2(hidden_states=torch.randn(1, 8, 2, 8, 8), timestep=torch.tensor([1]),
               encoder_hidden_states=torch.randn(1, 5, 32), return_dict=False)
    assert quantize(model, rec, tmp_path / "o") == 2
    assert "in_channels: 8 (recorded) vs 4 (model)" in capsys.readouterr().err
    assert quantize(model, tmp_path / "nope.safetensors", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err


def test_error_target_not_runnable(wan_job, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model, calib = wan_job
    assert quantize(model, calib, tmp_path / "o", "--target", "cuda-sm90") == 2
    err = capsys.readouterr().err
    assert "cuda-sm90" in err and "no CUDA device" in err
    assert quantize(model, calib, tmp_path / "o", "--target", "tpu") == 2


def test_error_too_little_memory(wan_job, tmp_path, capsys, monkeypatch):
    model, calib = wan_job
    monkeypatch.setattr(qz, "available_memory", lambda device: 100_000)
    assert quantize(model, calib, tmp_path / "o") == 2
    err = capsys.readouterr().err
    n = sum(p.numel() for p in tiny_wan().parameters())
    assert "not enough memory" in err and f"{n * 4 * qz.MEMORY_FACTOR / 2**30:.2f} GiB" in err
    assert "0.00 GiB is free" in err


def test_tiny_vsr(tmp_path, monkeypatch):
    """``--model tiny-vsr``: calibration recorded through the shipped TinyVSR pipeline, or the built-in clips."""
    from lsgq_compiler.vsr.models import load_tiny_vsr

    vsr = load_tiny_vsr()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), record_inputs(vsr.transformer, tmp_path / "vsr.safetensors"):
        for _ in range(4):
            vsr(torch.rand(1, 3, 2, 8, 8, generator=g))
    assert main(["quantize", "--model", "tiny-vsr", "--calib", str(tmp_path / "vsr.safetensors"), "--recipe",
                 "minmax", "--bits", "w8a8", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    s = json.loads((tmp_path / "o" / "report" / "summary.json").read_text())
    assert s["parameters"] > 5e6 and s["held_back_batches"] == 1
    assert s["sqnr_db"] > 30, s["sqnr_db"]  # W8A8 minmax on the shipped model: ~37 dB
    # without --calib: the built-in calibration clips, at the shape `lsgq eval` calibrates at
    builtin = qz._load_builtin_calibration(vsr)
    assert len(builtin) == 8 and tuple(builtin[0]["hidden_states"].shape) == (1, 48, 8, 32, 32)
    small = lsgq_compiler.load_inputs(tmp_path / "vsr.safetensors")
    monkeypatch.setattr(qz, "_load_builtin_calibration", lambda v: small)  # (the full set takes a minute here)
    assert main(["quantize", "--model", "tiny-vsr", "--recipe", "minmax", "--bits", "w8a8", "--out",
                 str(tmp_path / "b"), "--no-progress"]) == 0
    assert "built-in calibration" in (tmp_path / "b" / "report" / "summary.md").read_text()


def test_canonical_safetensors_headers(tmp_path):
    """safetensors writes several metadata keys in random order; sorting them makes saves byte-identical."""
    from safetensors.torch import load_file, save_file

    t = {"a": torch.arange(5.0), "b": torch.ones(3, dtype=torch.int8)}
    seen = set()
    for i in range(8):
        p = tmp_path / f"{i}.safetensors"
        save_file(t, str(p), metadata={"format": "x", "format_version": "1", "note": "ü"})
        assert qz.canonicalize_safetensors(p)
        seen.add(p.read_bytes())
    assert len(seen) == 1
    back = load_file(str(tmp_path / "0.safetensors"))
    assert all(torch.equal(back[k], t[k]) for k in t)
