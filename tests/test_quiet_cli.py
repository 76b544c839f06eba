"""A quiet command line (#14): no third-party noise on stderr; --verbose / LSGQ_VERBOSE=1 show it."""
import os
import re
import subprocess
import sys

import numpy as np

LSGQ = [sys.executable, "-c", "import sys; from lsgq_compiler.cli import main; sys.exit(main())"]


def _run(args, **env):
    e = {k: v for k, v in os.environ.items() if k != "LSGQ_VERBOSE"} | env
    return subprocess.run(LSGQ + args, capture_output=True, text=True, env=e, timeout=600)


def test_recipes_and_eval_help_write_nothing_to_stderr():
    for args in (["recipes"], ["eval", "--help"]):
        r = _run(args)
        assert r.returncode == 0 and r.stdout and r.stderr == "", (args, r.stderr[:2000])


def test_eval_on_a_tiny_folder_writes_only_the_projects_warnings(tmp_path):
    from lsgq_compiler.vsr.data import write_frames

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(8, 8, 3)).astype(np.uint8)
    write_frames(tmp_path / "clips" / "a", np.stack([np.kron(np.roll(base, i, 1), np.ones((8, 8, 1), np.uint8))
                                                     for i in range(2)]))
    (tmp_path / "clips" / "b").mkdir()  # an empty entry: the project's own "skipping b" warning
    r = _run(["eval", "--clips", str(tmp_path / "clips"), "--recipes", "minmax", "--bits", "w8a8",
              "--frames", "2", "--max-lq", "16", "--no-progress", "--json", str(tmp_path / "r.json")])
    assert r.returncode == 0, r.stderr[-2000:]
    # a Python warning is "file:line: Category: message" (then the source line); logs start "W1201 ..." / "WARNING"
    heads = [ln for ln in r.stderr.splitlines() if re.match(r"^\S+:\d+: \w*Warning:", ln)
             or re.match(r"^(W\d{4} |WARNING|Warning)", ln)]
    assert heads and all("lsgq_compiler" in ln for ln in heads), heads[:10]  # only the project's "skipping b"
    for known in ("register_constant", "torchao", "Failed to load", "triton"):
        assert known not in r.stderr
