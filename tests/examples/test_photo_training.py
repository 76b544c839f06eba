"""examples/photo_bundle.py, make_heldout_clips.py and train_tiny_vsr.py on CPU, with synthetic photos.

No apt and no Debian package in here: three synthetic JPEGs are placed at listed install paths under a
temporary root (two lomiri training photos, one plasma held-out photo). Only the allowed packages are read.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def ex():
    sys.path.insert(0, str(EXAMPLES))  # the scripts import as modules (spawned data workers re-import them too)
    import make_heldout_clips
    import photo_bundle
    import train_tiny_vsr

    yield photo_bundle, make_heldout_clips, train_tiny_vsr
    sys.path.remove(str(EXAMPLES))


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random colour image with some edges (BGR uint8)."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (255, 255, 255), 3)
    return img


@pytest.fixture(scope="module")
def bundle(ex, tmp_path_factory):
    pb = ex[0]
    root = tmp_path_factory.mktemp("root")
    picks = [("lomiri-wallpapers", "Bridge_by_Sander_Klootwijk.jpg"), ("lomiri-wallpapers", "Dragonfly_by_Bolly.jpg"),
             ("plasma-workspace-wallpapers", "Path")]
    for i, (pkg, key) in enumerate(picks):
        f = root / pb.PHOTOS[pkg][key][0].lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(f), _photo(240, 320 + 40 * i, i))
    out = tmp_path_factory.mktemp("b") / "bundle"
    assert pb.main(["--root", str(root), "--out", str(out), "--long-side", "256"]) == 0
    return root, out


def test_rule_is_an_explicit_list(ex):
    pb = ex[0]
    assert all("mate" not in d for p in pb.PACKAGES for d in pb.DEBS[p])
    assert pb.HELDOUT_PACKAGE in pb.PACKAGES and pb.HELDOUT_PACKAGE in pb.PHOTOS
    kde = "/usr/share/wallpapers/{}/contents/images/{}.jpg"
    assert pb.classify("plasma-workspace-wallpapers", kde.format("Path", "2560x1600")).keep
    assert pb.classify("plasma-workspace-wallpapers", kde.format("Path", "1920x1080")).reason.startswith("smaller")
    assert pb.classify("plasma-workspace-wallpapers", kde.format("Autumn", "2560x1600")).reason.startswith("abstract")
    assert pb.classify("plasma-workspace-wallpapers", "/usr/share/wallpapers/Path/contents/screenshot.jpg").reason \
        == "preview thumbnail"
    assert pb.classify("ukui-wallpapers", "/usr/share/backgrounds/new.jpg").reason.startswith("not reviewed")
    assert not pb.classify("lomiri-wallpapers", "/usr/share/backgrounds/lomiri-default-background.png", True).keep
    with pytest.raises(ValueError):  # only the four allowed packages
        pb.classify("other-wallpapers", "/usr/share/backgrounds/x.jpg")
    for pkg, photos in pb.PHOTOS.items():  # no image is both a photograph and art
        assert not set(photos) & set(pb.ART.get(pkg, ()))


def test_bundle_manifest_and_verify(ex, bundle):
    from lsgq_compiler.fsutil import file_sha256
    from lsgq_compiler.vsr.data.bundle import bundle_photos, load_bundle_photo, read_bundle

    root, out = bundle
    photos = read_bundle(out, verify=True)
    assert [p.split for p in photos].count("train") == 2 and [p.split for p in photos].count("heldout") == 1
    m = json.loads((out / "manifest.json").read_text())
    for p, e in zip(photos, m["photos"]):
        assert max(p.width, p.height) == 256  # downscaled from 320..400
        assert p.source_sha256 == file_sha256(root / p.source.lstrip("/"))
        assert not e["source_sha256_pinned"]  # synthetic stand-ins, not the Debian files
        assert load_bundle_photo(out, p).shape == (p.height, p.width, 3)
    assert [p.name for p in bundle_photos(out, "heldout")] == ["plasma_Path"]
    assert m["counts"]["lomiri-wallpapers"]["kept"] == 2
    tampered = out / photos[0].file
    data = tampered.read_bytes()
    tampered.write_bytes(data[:-10] + b"0" * 10)
    try:
        with pytest.raises(ValueError, match="altered"):
            read_bundle(out, verify=True)
    finally:
        tampered.write_bytes(data)


def test_skimage_share_sets_the_draw_weights(ex, bundle):
    """``--skimage-share``: the scikit-image photos together get exactly that share of the draw weight;
    without it the weights are the pixel counts."""
    _, out = bundle
    train = ex[2]
    by_pixels = train.photo_sources(str(out), True)
    assert all(float(s[3]) == float(int(s[3])) > 0 for s in by_pixels)
    for share in (0.25, 0.6):
        src = train.photo_sources(str(out), True, share)
        w = {k: sum(s[3] for s in src if s[0] == k) for k in ("bundle", "skimage")}
        assert math.isclose(w["skimage"] / (w["bundle"] + w["skimage"]), share, rel_tol=1e-12)
        assert [s[:3] for s in src] == [s[:3] for s in by_pixels]
    with pytest.raises(SystemExit, match="strictly between 0 and 1"):
        train.photo_sources(str(out), True, 1.0)


def test_fast_camera_is_seeded_and_leaves_default_pairs_alone(ex, bundle, tmp_path):
    """``--fast-camera``: share 0 gives the default pairs bit for bit; share 1 films every pair with the
    wider range (faster pans: larger frame-to-frame change), the same for the same seed and index."""
    _, out = bundle
    t = ex[2]
    src = t.photo_sources(str(out), False)
    fast = (40.0, 0.3, 5.0)

    def motion(hq: np.ndarray) -> float:
        return float(np.abs(np.diff(hq.astype(np.float32), axis=0)).mean())

    slow_m, fast_m = [], []
    for i in range(6):
        base = t.make_pair_photos((0, i, src))
        off = t.make_pair_photos((0, i, src), fast_camera=fast, fast_share=0.0)
        on = t.make_pair_photos((0, i, src), fast_camera=fast, fast_share=1.0)
        again = t.make_pair_photos((0, i, src), fast_camera=fast, fast_share=1.0)
        assert all(np.array_equal(a, b) for a, b in zip(base, off))
        assert all(np.array_equal(a, b) for a, b in zip(on, again))
        slow_m.append(motion(base[0]))
        fast_m.append(motion(on[0]))
    assert np.mean(fast_m) > np.mean(slow_m)
    with pytest.raises(SystemExit, match="--fast-camera takes"):
        t.main(["--device", "cpu", "--photos", str(out), "--fast-camera", "40,0.3", "--out", str(tmp_path / "x")])


def test_heldout_clips_are_seeded_and_read_by_eval(ex, bundle, tmp_path):
    from lsgq_compiler.vsr.evaluate import load_eval_clips

    mh = ex[1]
    _, out = bundle
    m1 = mh.make_clips(out, tmp_path / "a", n_clips=2, frames=4, size=64, seed=3)
    mh.make_clips(out, tmp_path / "b", n_clips=2, frames=4, size=64, seed=3)
    assert [c["photo"] for c in m1["clips"]] == ["plasma_Path", "plasma_Path"]
    name = m1["clips"][1]["name"]
    assert (tmp_path / "a" / name / "00003.png").read_bytes() == (tmp_path / "b" / name / "00003.png").read_bytes()
    clips = load_eval_clips(str(tmp_path / "a"), 8)
    assert [c.hq.shape for c in clips] == [(4, 64, 64, 3)] * 2 and [c.lq.shape for c in clips] == [(4, 16, 16, 3)] * 2
    assert not np.array_equal(clips[0].hq, clips[1].hq)  # new camera path for the reused photo


def test_costs_and_archs(ex):
    t = ex[2]
    assert t.costs(t.ARCHS[t.REF_ARCH])["train"] == pytest.approx(1.0)
    for a in t.ARCHS.values():
        assert a.grid_free == (a.name != t.REF_ARCH)
    p111 = t.ARCHS["p111-d256-c16"]
    assert t.costs(p111)["cpu"] > t.costs(p111)["train"]  # trains on 16x16 crops, runs on 32x32 tiles
    cfg = t.ARCHS["p211-d256"].config()
    tokens = 8 // 2 * 32 * 32
    assert t.forward_macs(cfg, 8, 32, 32) > 6 * 2 * tokens * tokens * 256  # attention alone


def test_train_two_steps_on_cpu(ex, bundle, tmp_path, monkeypatch):
    from lsgq_compiler.vsr.models import load_tiny_vsr, upscale_clip

    _, mh, t = ex
    _, out = bundle
    mh.make_clips(out, tmp_path / "clips", n_clips=1, frames=4, size=64)
    monkeypatch.setitem(t.ARCHS, "t-p122", t.Arch("t-p122", (1, 2, 2), 1, 64, layers=1))
    monkeypatch.setitem(t.ARCHS, "t-p211-c16", t.Arch("t-p211-c16", (2, 1, 1), 1, 64, layers=1, crop_lq=16))
    run = tmp_path / "run"
    rc = t.main(["--device", "cpu", "--photos", str(out), "--ablation", "t-p122,t-p211-c16", "--ablation-steps", "2",
                 "--arch", "auto", "--steps", "2", "--batch", "2", "--pool", "6", "--warm", "4", "--fresh", "1",
                 "--workers", "1", "--heldout", "2", "--eval-every", "1", "--eval-clips", "0", "--split-mb", "0.1",
                 "--report-clips", str(tmp_path / "clips"), "--out", str(run)])
    assert rc == 0
    log = json.loads((run / "train_log.json").read_text())
    assert log["arch"] == "t-p211-c16"  # the only grid-free candidate
    assert [r["tag"] for r in log["runs"]] == ["ablation t-p122", "ablation t-p211-c16", "final"]
    for r in log["runs"]:
        assert len(r["val"]) == 2 and all(math.isfinite(v) for _, v in r["val"])
        assert math.isfinite(r["final"]["space8"]) and math.isfinite(r["final"]["time2"])
    assert math.isfinite(log["report_clips"][str(tmp_path / "clips")]["mean"]["model"]["psnr"])
    assert (run / "train_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parts = sorted(run.glob("tiny_vsr.safetensors.part*"))
    assert len(parts) >= 2 and not (run / "tiny_vsr.safetensors").exists()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "tiny_vsr.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
    (tmp_path / "w" / "tiny_vsr.json").write_text((run / "tiny_vsr.json").read_text())
    vsr = load_tiny_vsr(tmp_path / "w" / "tiny_vsr.safetensors")
    assert tuple(vsr.transformer.config.patch_size) == (2, 1, 1)
    lq = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        assert upscale_clip(vsr, lq).shape == (8, 64, 64, 3)


def test_stop_and_resume_gives_the_uninterrupted_weights(ex, bundle, tmp_path, monkeypatch, capsys):
    """``--stop-at 3 --state S`` then the same command without ``--stop-at`` ends with exactly the weights of
    one uninterrupted 5-step run (CPU, bit for bit); a state from other settings is refused by name."""
    from safetensors.torch import load_file

    t = ex[2]
    _, out = bundle
    monkeypatch.setitem(t.ARCHS, "t-p211", t.Arch("t-p211", (2, 1, 1), 1, 64, layers=1, crop_lq=16))
    base = ["--device", "cpu", "--photos", str(out), "--arch", "t-p211", "--steps", "5", "--batch", "2", "--pool", "6",
            "--warm", "4", "--fresh", "1", "--workers", "1", "--heldout", "2", "--eval-every", "2", "--warmup", "2",
            "--eval-clips", "0"]
    assert t.main(base + ["--out", str(tmp_path / "whole")]) == 0
    state = tmp_path / "state"
    assert t.main(base + ["--state", str(state), "--stop-at", "3", "--out", str(tmp_path / "part")]) == 0
    assert (state / "train_state.safetensors").exists() and not (tmp_path / "part" / "tiny_vsr.safetensors").exists()
    assert json.loads((state / "train_state.json").read_text())["step"] == 3
    assert t.main(base + ["--state", str(state), "--out", str(tmp_path / "part")]) == 0
    a = load_file(str(tmp_path / "whole" / "tiny_vsr.safetensors"))
    b = load_file(str(tmp_path / "part" / "tiny_vsr.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = json.loads((tmp_path / "whole" / "train_log.json").read_text())["runs"][-1]
    lb = json.loads((tmp_path / "part" / "train_log.json").read_text())["runs"][-1]
    assert la["loss"] == lb["loss"] and la["val"] == lb["val"]
    with pytest.raises(SystemExit, match="lr"):
        t.main([*base, "--lr", "1e-3", "--state", str(state), "--out", str(tmp_path / "other")])
    with pytest.raises(SystemExit, match="--stop-at and --state-every need --state"):
        t.main([*base, "--stop-at", "2", "--out", str(tmp_path / "other")])
    # --state-every 2: a call killed after step 4 leaves the step-4 state (simulated by keeping the state of a
    # finished run: its last periodic save is step 4); the same command then resumes there and ends the same
    every = tmp_path / "every"
    assert t.main(base + ["--state", str(every), "--state-every", "2", "--out", str(tmp_path / "e1")]) == 0
    assert json.loads((every / "train_state.json").read_text())["step"] == 4
    capsys.readouterr()
    assert t.main(base + ["--state", str(every), "--state-every", "2", "--out", str(tmp_path / "e2")]) == 0
    assert f"resumed from {every} at step 4" in capsys.readouterr().out
    for d in ("e1", "e2"):
        c = load_file(str(tmp_path / d / "tiny_vsr.safetensors"))
        assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) for k in a)
