"""save_quantized / load_quantized: exact round trip, integer codes, and refusal of bad files."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized, load_quantized, save_quantized
from lsgq_compiler.backends.artifacts import MANIFEST, WEIGHTS, ArtifactError, pack_nibbles, unpack_nibbles


@pytest.fixture(scope="module")
def w4(tmp_path_factory):
    m, inp = tiny_wan(), wan_inputs()
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=4, act_bits=8), calib_data=[inp], progress=False)
    d = save_quantized(qm, tmp_path_factory.mktemp("art") / "w4a8", model=m)
    with torch.no_grad():
        return m, inp, qm, qm(**inp), d


def test_round_trip_is_exact(w4):
    m, inp, qm, y, d = w4
    loaded = load_quantized(d, m, inp)
    with torch.no_grad():
        assert torch.equal(loaded(**inp), y)
    assert loaded.plan.to_json() == qm.plan.to_json()
    assert loaded.config == qm.config


def test_weights_are_integer_codes(w4):
    _, _, qm, _, d = w4
    with safe_open(str(d / WEIGHTS), "pt") as f:
        keys = set(f.keys())
        codes = f.get_tensor("blocks.0.attn1.to_q/weight.codes")
    assert codes.dtype == torch.uint8 and codes.shape == (32, 16)  # 4-bit: two codes per byte
    assert not any(k.endswith("/weight") for k in keys)  # no float weights stored
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and len(manifest["tensors"]["blocks.0.attn1.to_q/weight.codes"]["sha256"]) == 64
    q = torch.randint(0, 16, (5, 7), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(q), 7), q)


def test_lowrank_model_round_trip(tmp_path):
    m, inp = tiny_wan(), wan_inputs()
    cfg = QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, options={"light_iters": 2, "full_iters": 3})
    qm = compile_quantized(m, inp, cfg, calib_data=[inp], progress=False)
    assert any(x.lr_down is not None for x in qm.quant_linears().values())
    d = save_quantized(qm, tmp_path / "lsg", model=m, lowrank_dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(load_quantized(d, m, inp)(**inp), qm(**inp))
    with safe_open(str(save_quantized(qm, tmp_path / "lsg16") / WEIGHTS), "pt") as f:
        assert f.get_tensor("blocks.0.attn1.to_q/lr_up").dtype == torch.float16


def _copy(d, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(d, out)
    return out


def test_edited_tensor_is_refused(w4, tmp_path):
    m, inp, _, _, d = w4
    c = _copy(d, tmp_path)
    raw = bytearray((c / WEIGHTS).read_bytes())
    raw[-5] ^= 0x01  # flip one bit of the last tensor's data
    (c / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256"):
        load_quantized(c, m, inp)


def test_truncated_file_is_refused(w4, tmp_path):
    m, inp, _, _, d = w4
    c = _copy(d, tmp_path)
    raw = (c / WEIGHTS).read_bytes()
    (c / WEIGHTS).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_quantized(c, m, inp)
    (c / MANIFEST).write_text((d / MANIFEST).read_text()[:100])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_quantized(c, m, inp)


def test_pickle_and_other_formats_are_refused(w4, tmp_path):
    m, inp, _, _, d = w4
    c = _copy(d, tmp_path)
    torch.save({"x": torch.zeros(2)}, c / WEIGHTS)  # a torch.save file under the safetensors name
    with pytest.raises(ArtifactError, match="pickle"):
        load_quantized(c, m, inp)
    man = json.loads((d / MANIFEST).read_text())
    man["weights"] = "weights.pt"
    (c / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="not a .safetensors"):
        load_quantized(c, m, inp)
    man["weights"], man["format_version"] = WEIGHTS, 99
    (c / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="format version"):
        load_quantized(c, m, inp)
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        load_quantized(d / WEIGHTS, m, inp)


def test_other_base_model_is_refused(w4):
    _, inp, _, _, d = w4
    with pytest.raises(ArtifactError, match="differs from the model"):
        load_quantized(d, tiny_wan(seed=5), inp)


def test_writes_are_atomic_and_never_clobber_foreign_folders(w4, tmp_path):
    m, inp, qm, y, d = w4
    target = tmp_path / "art"
    save_quantized(qm, target)
    save_quantized(qm, target)  # replaces an earlier artifact
    assert sorted(os.listdir(target)) == sorted([MANIFEST, WEIGHTS])
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary folders left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an lsgq artifact"):
        save_quantized(qm, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
