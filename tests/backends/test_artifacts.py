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


def test_foreign_lsgq_json_folder_is_refused_and_user_files_survive(w4, tmp_path):
    """Issue 15: a folder holding a file named lsgq.json (not our manifest) plus user files was deleted."""
    m, inp, qm, y, d = w4
    foreign = tmp_path / "photos"
    (foreign / "sub").mkdir(parents=True)
    (foreign / MANIFEST).write_text('{"my": "own json"}')
    (foreign / "a.jpg").write_bytes(b"jpg")
    (foreign / "sub" / "b.jpg").write_bytes(b"jpg2")
    with pytest.raises(ArtifactError, match="not an lsgq artifact"):
        save_quantized(qm, foreign)
    assert (foreign / MANIFEST).read_text() == '{"my": "own json"}'
    assert (foreign / "a.jpg").exists() and (foreign / "sub" / "b.jpg").exists()
    art = save_quantized(qm, tmp_path / "art")
    (art / "README.txt").write_text("my notes")
    (art / "runs").mkdir()
    (art / "runs" / "log.txt").write_text("log")
    save_quantized(qm, art, model=m)  # replace the artifact: the user's files stay
    assert (art / "README.txt").read_text() == "my notes" and (art / "runs" / "log.txt").read_text() == "log"
    with torch.no_grad():
        assert torch.equal(load_quantized(art, m, inp)(**inp), y)


def test_artifact_modes_follow_umask(w4, tmp_path):
    _, _, qm, _, _ = w4
    old = os.umask(0o022)
    try:
        art = save_quantized(qm, tmp_path / "art")
    finally:
        os.umask(old)
    assert art.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in art.iterdir())


_KILLER = r"""
import json, os, random, signal, sys, time
from pathlib import Path
from lsgq_compiler.backends.artifacts import _write_atomically, read_artifact
dest, arts, rng = Path(sys.argv[1]), [read_artifact(p) for p in sys.argv[2:4]], random.Random(0)
for k in range(6):
    pid = os.fork()
    if pid == 0:  # the saver: alternates the two artifacts until killed
        i = 0
        while True:
            man, ten = arts[i % 2]
            _write_atomically(dest, ten, man)
            i += 1
    time.sleep(rng.uniform(0.05, 0.6))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    man, _ = read_artifact(dest)  # raises if missing, truncated or mixed
    print(json.dumps({"version": man["base_model_sha256"], "notes": (dest / "notes.txt").read_text()}), flush=True)
"""


def test_save_killed_at_random_points_leaves_old_or_new(w4, tmp_path):
    """Issue 15: a save SIGKILLed at random points, several times: the destination is always a
    complete, loadable artifact (the old or the new), user files survive, leftovers are cleaned."""
    import subprocess
    import sys

    m, inp, qm, y, d = w4
    a, b = save_quantized(qm, tmp_path / "a"), save_quantized(qm, tmp_path / "b", model=m)
    versions = {json.loads((p / MANIFEST).read_text())["base_model_sha256"] for p in (a, b)}
    dest = save_quantized(qm, tmp_path / "dest")
    (dest / "notes.txt").write_text("keep me")
    res = subprocess.run([sys.executable, "-c", _KILLER, str(dest), str(a), str(b)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 6 and all(r["version"] in versions and r["notes"] == "keep me" for r in rows)
    save_quantized(qm, dest, model=m)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "dest"]
    assert sorted(os.listdir(dest)) == sorted([MANIFEST, WEIGHTS, "notes.txt"])
    with torch.no_grad():
        assert torch.equal(load_quantized(dest, m, inp)(**inp), y)


def test_edited_plan_in_artifact_is_refused(w4, tmp_path):
    """Issue 15: the plan inside an artifact was not covered by the checksums nor validated."""
    import shutil

    m, inp, qm, y, d = w4
    for edit, match in ((lambda p: p["layers"]["blocks.0.attn1.to_q"].update(weight_bits=8), "plan_sha256"),
                        (lambda p: p["layers"]["blocks.0.attn1.to_q"].update(weight_bits=0), "plan_sha256")):
        c = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        shutil.copytree(d, c)
        man = json.loads((c / MANIFEST).read_text())
        edit(man["plan"])
        (c / MANIFEST).write_text(json.dumps(man))
        with pytest.raises(ArtifactError, match=match):
            load_quantized(c, m, inp)
    # an invalid plan with a matching checksum (hand-made) is refused by the plan check, naming the field
    from lsgq_compiler.backends.artifacts import _plan_sha256

    c = tmp_path / "forged"
    shutil.copytree(d, c)
    man = json.loads((c / MANIFEST).read_text())
    man["plan"]["layers"]["blocks.0.attn1.to_q"]["act_bits"] = 4.5
    man["plan_sha256"] = _plan_sha256(man)
    (c / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="act_bits=4.5"):
        load_quantized(c, m, inp)


def test_artifact_without_model_needs_explicit_opt_out(w4, tmp_path):
    """Issue 15: an artifact saved without model= loaded into another base model without complaint."""
    m, inp, qm, y, d = w4
    art = save_quantized(qm, tmp_path / "nomodel")
    assert json.loads((art / MANIFEST).read_text())["saved_with_model"] is False
    with pytest.raises(ArtifactError, match="(?s)saved without model=.*check_model=False"):
        load_quantized(art, tiny_wan(seed=5), inp)
    with torch.no_grad():
        assert torch.equal(load_quantized(art, m, inp, check_model=False)(**inp), y)


def test_leftovers_of_the_old_two_rename_save_are_recovered(w4, tmp_path):
    """Issue 15: a kill between the old code's two renames left the artifact only in .NAME.old-PID."""
    import shutil
    import subprocess
    import sys

    m, inp, qm, y, d = w4
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    shutil.copytree(d, tmp_path / f".art.old-{dead.pid}")  # the destination itself is missing
    (tmp_path / f".art.tmp-{dead.pid}abc").mkdir()
    save_quantized(qm, tmp_path / "art", model=m)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "art", m, inp)(**inp), y)
