"""record_inputs / load_inputs: a transformer's call arguments recorded while a pipeline runs."""
from __future__ import annotations

import json

import pytest
import torch

import lsgq_compiler
from lsgq_compiler.record import META_KEY, RecordError, load_inputs, read_record, record_inputs
from tests.conftest import cogvideox_inputs, tiny_cogvideox, tiny_wan


def sample_wan(model, clips: int = 2, steps: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """A real flow-matching sampling loop (diffusers' scheduler) calling the transformer by keyword,
    as WanPipeline does; returns the final latents per clip."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(seed)
    outs = []
    for _ in range(clips):
        x, emb = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            with torch.no_grad():
                v = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=emb, return_dict=False)[0]
            x = sched.step(v, t, x).prev_sample
        outs.append(x)
    return outs


def test_records_a_sampling_loop_and_reads_back(tmp_path):
    m = tiny_wan()
    seen = []
    h = m.register_forward_pre_hook(lambda mod, a, kw: seen.append({k: v.clone() for k, v in kw.items()
                                                                    if isinstance(v, torch.Tensor)}),
                                    with_kwargs=True)
    path = tmp_path / "calib.safetensors"
    with record_inputs(m, path, max_calls=5) as rec:
        sample_wan(m)
    h.remove()
    assert len(rec.calls) == 5 and rec.seen == 8
    batches = load_inputs(path)
    assert len(batches) == 5
    for b, ref in zip(batches, seen[:5]):
        assert set(b) == {"hidden_states", "timestep", "encoder_hidden_states"}  # return_dict dropped
        for k in ref:
            assert torch.equal(b[k], ref[k])
    meta, _ = read_record(path)
    assert meta["model_class"] == "WanTransformer3DModel" and meta["model_config"]["in_channels"] == 4
    # the hook is gone and the model untouched: a later call records nothing and runs the same
    with torch.no_grad():
        a = m(**batches[0], return_dict=False)[0]
    assert len(rec.calls) == 5 and torch.isfinite(a).all()


def test_every_and_cast(tmp_path):
    m = tiny_wan()
    path = tmp_path / "c.safetensors"
    with record_inputs(m, path, max_calls=8, every=4):
        sample_wan(m)
    b = load_inputs(path, dtype=torch.float64)
    assert len(b) == 2  # calls 0 and 4 of 8
    assert b[0]["hidden_states"].dtype == torch.float64 == b[0]["encoder_hidden_states"].dtype
    assert load_inputs(path)[0]["hidden_states"].dtype == torch.float32  # as stored


def test_nested_structures_positional_and_scalars(tmp_path):
    """CogVideoX takes image_rotary_emb as a (cos, sin) tuple; positional args get their names."""
    m = tiny_cogvideox()
    inp = cogvideox_inputs()
    rot = (torch.randn(6, 16), torch.randn(6, 16))
    path = tmp_path / "cog.safetensors"
    with record_inputs(m, path, max_calls=2):
        with torch.no_grad():
            m(inp["hidden_states"], inp["encoder_hidden_states"], timestep=inp["timestep"],
              image_rotary_emb=None, attention_kwargs={"scale": 1.0}, return_dict=False)
    b = load_inputs(path)[0]
    assert torch.equal(b["hidden_states"], inp["hidden_states"])
    assert torch.equal(b["encoder_hidden_states"], inp["encoder_hidden_states"])
    assert b["image_rotary_emb"] is None and b["attention_kwargs"] == {"scale": 1.0}

    class Takes(torch.nn.Module):
        def forward(self, x, rot=None, extra=None, flag=True, name="a"):
            return x

    t = Takes()
    with record_inputs(t, tmp_path / "n.safetensors"):
        t(torch.ones(2), rot=rot, extra={"a": [torch.zeros(3), 2.5]}, flag=False, name="z")
    r = load_inputs(tmp_path / "n.safetensors")[0]
    assert isinstance(r["rot"], tuple) and all(torch.equal(x, y) for x, y in zip(r["rot"], rot))
    assert isinstance(r["extra"]["a"], list) and r["extra"]["a"][1] == 2.5 and torch.equal(r["extra"]["a"][0],
                                                                                         torch.zeros(3))
    assert r["flag"] is False and r["name"] == "z" and torch.equal(r["x"], torch.ones(2))


def test_tiny_vsr_record_matches_transformer_inputs_and_calibrates(tmp_path):
    from lsgq_compiler.vsr.models import load_tiny_vsr

    vsr = load_tiny_vsr()
    g = torch.Generator().manual_seed(0)
    lqs = [torch.rand(1, 3, 2, 8, 8, generator=g) for _ in range(3)]
    path = tmp_path / "vsr.safetensors"
    with torch.no_grad(), record_inputs(vsr.transformer, path):
        for lq in lqs:
            vsr(lq)
    batches = lsgq_compiler.load_inputs(path)
    assert len(batches) == 3
    for b, lq in zip(batches, lqs):
        ref = vsr.transformer_inputs(lq)
        assert set(b) == set(ref) and all(torch.equal(b[k], ref[k]) for k in ref)
    qm = lsgq_compiler.compile_quantized(vsr.transformer, batches[0], lsgq_compiler.QuantConfig(recipe="minmax"),
                                         calib_data=batches, progress=False)
    with torch.no_grad():
        ref = vsr.transformer(**batches[2], return_dict=False)[0]
        out = qm(**batches[2])
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())
    assert sqnr > 25, sqnr  # W8A8 minmax on the shipped model: ~37 dB on held-back clips


def test_nothing_written_on_error_or_no_call(tmp_path):
    m = tiny_wan()
    path = tmp_path / "c.safetensors"
    with pytest.raises(RuntimeError, match="boom"):
        with record_inputs(m, path):
            sample_wan(m, clips=1, steps=1)
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="was not called"):
        with record_inputs(m, path):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="max_calls"):
        with record_inputs(m, path, max_calls=0):
            pass

    class K(torch.nn.Module):
        def forward(self, x, obj=None):
            return x

    k = K()
    with pytest.raises(TypeError, match="cannot be recorded"):
        with record_inputs(k, tmp_path / "k.safetensors"):
            k(torch.zeros(1), obj=object())
    assert not (tmp_path / "k.safetensors").exists()


def test_read_refuses_foreign_or_edited_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(RecordError, match="does not exist"):
        load_inputs(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(RecordError, match="not recorded calibration inputs"):
        load_inputs(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(RecordError, match="not a readable safetensors"):
        load_inputs(tmp_path / "junk.safetensors")
    meta = {"format": "lsgq-inputs", "version": 1, "calls": [{"x": {"t": "tensor", "key": "0/x"}}]}
    save_file({"0/y": torch.zeros(2)}, str(tmp_path / "edited.safetensors"), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(RecordError, match="truncated or edited"):
        load_inputs(tmp_path / "edited.safetensors")
    meta["version"] = 99
    save_file({"0/x": torch.zeros(2)}, str(tmp_path / "new.safetensors"), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(RecordError, match="newer"):
        load_inputs(tmp_path / "new.safetensors")
