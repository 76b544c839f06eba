"""save_quantized / load_quantized: thin wrappers over the deploy checkpoint (the one on-disk format).

Exact round trips of simulated (target ``sim``) plans, also for the peer recipes whose quantizers
the checkpoint stores generically; refusals of edited, truncated, pickled and foreign files; what
happens to existing folders. Target kernels, shapes, pipelines and the damaged-tensor, newer-format
and other-class refusals of ``from_pretrained`` are in tests/deploy/.

Thresholds: bit-exact (``torch.equal``) wherever the loaded layer computes the compiled layer's own
float ops; quantvsr >= 80 dB SQNR (its LBA bias is folded into the layer bias: one float addition in
another order).
"""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import tiny_cogvideox, tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized, load_quantized, save_pretrained, save_quantized
from lsgq_compiler.deploy.checkpoint import CONFIG, WEIGHTS, CheckpointError, _config_sha256
from lsgq_compiler.fsutil import FolderNotOursError, file_sha256

QUICK = {"light_iters": 2, "full_iters": 3, "train_iters": 3}


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    e = (ref.double() - out.double()).pow(2).sum()
    return math.inf if e == 0 else 10 * math.log10(float(ref.double().pow(2).sum() / e))


def _run(m, inp):
    with torch.no_grad():
        return m(**inp, return_dict=False)[0]


@pytest.fixture(scope="module")
def w4(tmp_path_factory):
    m, inp = tiny_wan(), wan_inputs()
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=4, act_bits=8), calib_data=[inp], progress=False)
    d = save_quantized(qm, tmp_path_factory.mktemp("art") / "w4a8", model=m)
    with torch.no_grad():
        return m, inp, qm, qm(**inp), d


def test_round_trip_is_exact_without_the_base_model(w4):
    m, inp, qm, y, d = w4
    loaded = load_quantized(d)  # no base model, no example inputs
    assert type(loaded) is type(m)
    assert torch.equal(_run(loaded, inp), y)
    assert torch.equal(_run(load_quantized(d, m, inp), inp), y)  # the old call still works
    qc = json.loads((d / CONFIG).read_text())["quantization_config"]
    assert qc["plan"] == json.loads(json.dumps(qm.plan.to_dict())) and qc["config"] == qm.config.to_dict()


def test_weights_are_integer_codes(w4):
    from safetensors import safe_open

    _, _, _, _, d = w4
    with safe_open(str(d / WEIGHTS), "pt") as f:
        keys = set(f.keys())
        codes = f.get_tensor("blocks.0.attn1.to_q.w_codes")
    assert codes.dtype == torch.uint8 and codes.shape == (32, 16)  # 4-bit: two codes per byte
    assert "blocks.0.attn1.to_q.weight" not in keys  # no float weight for a quantized layer
    qc = json.loads((d / CONFIG).read_text())["quantization_config"]
    assert qc["format_version"] == 2 and len(qc["files"][WEIGHTS]) == 64 and len(qc["config_sha256"]) == 64


def test_other_base_model_only_names_the_class(w4):
    """``model`` is not read: another Wan's weights change nothing, another class is refused."""
    _, inp, _, y, d = w4
    assert torch.equal(_run(load_quantized(d, tiny_wan(seed=5), inp), inp), y)
    with pytest.raises(CheckpointError, match="holds a WanTransformer3DModel, not a CogVideoXTransformer3DModel"):
        load_quantized(d, tiny_cogvideox())


FRESH = r"""
import json, sys, torch
from safetensors.torch import load_file, save_file
from lsgq_compiler import load_quantized
root = sys.argv[1]
inp = load_file(root + "/inputs.safetensors")
out = {}
for name in json.load(open(root + "/names.json")):
    with torch.no_grad():
        out[name] = load_quantized(root + "/" + name)(**inp, return_dict=False)[0].contiguous()
save_file(out, root + "/outputs.safetensors")
"""


def test_recipes_round_trip_in_a_fresh_process(tmp_path):
    """Low-rank factors at the compiled precision (lsgquant), stored learnable quantizers with LET
    (passionsr), clipped / per-channel static quantizers (qvd), LBA (quantvsr): loaded in a new
    process that never saw the recipes run."""
    from safetensors.torch import load_file, save_file

    m, inp = tiny_wan(), wan_inputs()
    ref = {}
    for recipe in ("lsgquant", "passionsr", "qvd", "quantvsr"):
        opts = {**QUICK, "lowrank_share": 0.2} if recipe == "lsgquant" else QUICK  # rank > 1
        qm = compile_quantized(m, inp, QuantConfig(recipe=recipe, weight_bits=4, act_bits=4, options=opts),
                               calib_data=[inp], progress=False)
        d = save_quantized(qm, tmp_path / recipe)
        acts = {(c.get("act") or {}).get("cls") for c in json.loads((d / CONFIG).read_text())
                ["quantization_config"]["layers"].values()}
        assert ("stored" in acts) == (recipe in ("passionsr", "qvd")), (recipe, acts)
        if recipe == "lsgquant":  # SVD factors are column-major; CPU GEMMs round by layout: it is kept
            lm = load_quantized(d)
            lay = [(getattr(q, f).stride(), getattr(lm.get_submodule(p), f).stride(), getattr(q, f).is_contiguous())
                   for p, q in qm.quant_linears().items() if q.lr_down is not None for f in ("lr_down", "lr_up")]
            assert lay and all(a == b for a, b, _ in lay) and not all(c for _, _, c in lay), lay
        with torch.no_grad():
            ref[recipe] = qm(**inp)
    save_file({k: v.contiguous() for k, v in inp.items()}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "names.json").write_text(json.dumps(sorted(ref)))
    r = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_file(str(tmp_path / "outputs.safetensors"))
    for recipe in ("lsgquant", "passionsr", "qvd"):
        assert torch.equal(got[recipe], ref[recipe]), (recipe, sqnr(ref[recipe], got[recipe]))
    assert sqnr(ref["quantvsr"], got["quantvsr"]) >= 80.0, sqnr(ref["quantvsr"], got["quantvsr"])


def test_sharded_checkpoint_round_trip_and_truncated_shard(w4, tmp_path):
    _, inp, qm, y, _ = w4
    d = save_pretrained(qm, tmp_path / "sharded", max_shard_bytes=4096)
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) > 2 and (d / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert torch.equal(_run(load_quantized(d), inp), y)
    f = d / shards[1]
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"{shards[1]} fails its sha256 check"):
        load_quantized(d)


def test_non_diffusers_model_is_refused_with_what_to_do():
    toy, inp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)).eval(), {"input": torch.randn(4, 32)}
    qm = compile_quantized(toy, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    with pytest.raises(TypeError, match="(?s)Sequential is not a diffusers model.*quant_state_dict"):
        save_quantized(qm, "/nonexistent/never-written")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(d, edit, forge=False):
    cfg = json.loads((d / CONFIG).read_text())
    edit(cfg)
    if forge:  # a hand-made config whose checksum matches: the checks behind the checksum must hold
        cfg["quantization_config"]["config_sha256"] = _config_sha256(cfg)
    (d / CONFIG).write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit", [
    lambda c: c["quantization_config"]["layers"]["blocks.0.attn1.to_q"]["act"].update(bits=4),
    lambda c: c["quantization_config"]["plan"]["layers"]["blocks.0.attn1.to_q"].update(weight_bits=8),
    lambda c: c.update(eps=1e-3),
], ids=["layer-config", "plan", "model-config"])
def test_edited_config_is_refused(w4, tmp_path, edit):
    c = _copy(w4[4], tmp_path / "c")
    _edit_config(c, edit)
    with pytest.raises(CheckpointError, match="(?s)fails its checksum.*re-save it"):
        load_quantized(c)


def test_truncated_missing_and_pickled_files_are_refused(w4, tmp_path):
    d = w4[4]
    c = _copy(d, tmp_path / "c")
    (c / CONFIG).write_text((d / CONFIG).read_text()[:100])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_quantized(c)
    shutil.copy(d / CONFIG, c / CONFIG)
    (c / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="weights file diffusion_pytorch_model.safetensors is missing"):
        load_quantized(c)
    torch.save({"x": torch.zeros(2)}, c / WEIGHTS)  # a pickle under the safetensors name, checksums forged
    _edit_config(c, lambda cfg: cfg["quantization_config"]["files"].update({WEIGHTS: file_sha256(c / WEIGHTS)}),
                 forge=True)
    with pytest.raises(CheckpointError, match="is not readable safetensors"):
        load_quantized(c)
    os.replace(c / WEIGHTS, c / "diffusion_pytorch_model.bin")
    _edit_config(c, lambda cfg: cfg["quantization_config"].update(
        files={"diffusion_pytorch_model.bin": file_sha256(c / "diffusion_pytorch_model.bin")}), forge=True)
    with pytest.raises(CheckpointError, match="(?s)not a .safetensors file.*never pickle"):
        load_quantized(c)
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint folder"):
        load_quantized(d / CONFIG)


def _legacy_artifact(folder):
    """A folder as the earlier save_quantized wrote it (lsgq.json + weights.safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"blocks.0.attn1.to_q/weight.codes": torch.zeros(32, 16, dtype=torch.uint8)},
              str(folder / "weights.safetensors"))
    (folder / "lsgq.json").write_text(json.dumps({"format": "lsgq-quantized", "format_version": 1,
                                                  "weights": "weights.safetensors",
                                                  "files": ["lsgq.json", "weights.safetensors"]}))
    return folder


def test_earlier_artifact_is_refused_on_load_and_replaced_on_save(w4, tmp_path):
    _, inp, qm, y, _ = w4
    art = _legacy_artifact(tmp_path / "art")
    (art / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="(?s)earlier save_quantized format.*compile the model again"):
        load_quantized(art)
    save_quantized(qm, art)
    assert sorted(os.listdir(art)) == sorted([CONFIG, WEIGHTS, "notes.txt"])
    assert torch.equal(_run(load_quantized(art), inp), y)


def test_replacing_keeps_user_files_and_foreign_folders_are_refused(w4, tmp_path):
    m, inp, qm, y, _ = w4
    target = tmp_path / "ckpt"
    save_quantized(qm, target)
    save_quantized(qm, target)  # replaces an earlier checkpoint
    assert sorted(os.listdir(target)) == sorted([CONFIG, WEIGHTS])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left behind
    (target / "README.txt").write_text("my notes")
    (target / "runs").mkdir()
    (target / "runs" / "log.txt").write_text("log")
    save_quantized(qm, target, model=m)
    assert (target / "README.txt").read_text() == "my notes" and (target / "runs" / "log.txt").read_text() == "log"
    assert torch.equal(_run(load_quantized(target), inp), y)
    # the user's own diffusers model folder (a config.json that is not an lsgq checkpoint) is never replaced
    own = tmp_path / "transformer"
    m.save_pretrained(own)
    before = {p.name: p.read_bytes() for p in own.iterdir()}
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "lsgq.json").write_text('{"my": "own json"}')
    (photos / "sub" / "b.jpg").write_bytes(b"jpg")
    for foreign in (own, photos):
        with pytest.raises(FolderNotOursError, match="not an lsgq checkpoint"):
            save_quantized(qm, foreign)
    assert {p.name: p.read_bytes() for p in own.iterdir()} == before
    assert (photos / "lsgq.json").read_text() == '{"my": "own json"}' and (photos / "sub" / "b.jpg").exists()


def test_checkpoint_modes_follow_umask(w4, tmp_path):
    qm = w4[2]
    old = os.umask(0o022)
    try:
        d = save_quantized(qm, tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert d.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in d.iterdir())
