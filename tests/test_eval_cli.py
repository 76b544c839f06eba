"""`lsgq eval` on a folder it has never seen: odd frame sizes, a bad clip skipped, bad folders refused."""
import json

import numpy as np
import pytest

from lsgq_compiler.cli import main
from lsgq_compiler.data import write_frames


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
