"""fsutil: atomic files and folders, foreign files kept, SIGKILL at any point leaves old or new."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lsgq_compiler import fsutil
from lsgq_compiler.fsutil import FolderNotOursError, atomic_path, atomic_write_text, write_folder

PKG = Path(fsutil.__file__).parent


def _owned(d: Path):
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return m["files"] + ["manifest.json"] if m.get("format") == "test-artifact" else None


def _writer(version: str, files: int = 3, size: int = 1000):
    def write(stage: Path) -> None:
        names = []
        for i in range(files):
            (stage / f"shard-{i}.bin").write_bytes(version.encode() * size)
            names.append(f"shard-{i}.bin")
        (stage / "manifest.json").write_text(json.dumps({"format": "test-artifact", "version": version,
                                                         "files": names}))
    return write


def _check_complete(d: Path) -> str:
    m = json.loads((d / "manifest.json").read_text())
    for f in m["files"]:
        data = (d / f).read_bytes()
        assert data == m["version"].encode() * (len(data) // len(m["version"])) and data, f
    return m["version"]


def test_atomic_write_follows_umask_and_cleans_stale(tmp_path):
    old = os.umask(0o002)
    try:
        p = atomic_write_text(tmp_path / "a.json", "{}")
        assert (p.stat().st_mode & 0o777) == 0o664
        d = write_folder(tmp_path / "art", _writer("a"), owned_files=_owned)
        assert (d.stat().st_mode & 0o777) == 0o775 and ((d / "shard-0.bin").stat().st_mode & 0o777) == 0o664
    finally:
        os.umask(old)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_file = tmp_path / f".a.json.lsgq-tmp-{dead.pid}-0123abcd.json"
    stale_file.write_text("partial")
    stale_dir = tmp_path / f".art.lsgq-stage-{dead.pid}-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("partial")
    alive = tmp_path / f".a.json.lsgq-tmp-{os.getppid()}-0123abcd.json"  # a live writer's: kept
    alive.write_text("in progress")
    atomic_write_text(tmp_path / "a.json", "[]")
    write_folder(tmp_path / "art", _writer("b"), owned_files=_owned)
    assert not stale_file.exists() and not stale_dir.exists() and alive.exists()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert (tmp_path / "a.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", "art", alive.name])


def test_write_folder_refuses_foreign_and_keeps_user_files(tmp_path):
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "manifest.json").write_text('{"format": "something else", "files": []}')  # the name alone is not ours
    (foreign / "sub" / "photo.png").write_bytes(b"png")
    with pytest.raises(FolderNotOursError, match="not an artifact"):
        write_folder(foreign, _writer("a"), owned_files=_owned)
    assert (foreign / "sub" / "photo.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing left behind

    art = write_folder(tmp_path / "art", _writer("a", files=3), owned_files=_owned)
    (art / "notes.txt").write_text("keep me")
    (art / "mine").mkdir()
    (art / "mine" / "deep.txt").write_text("keep me too")
    write_folder(art, _writer("b", files=1), owned_files=_owned)  # fewer shards: the old ones go
    assert _check_complete(art) == "b"
    assert sorted(os.listdir(art)) == ["manifest.json", "mine", "notes.txt", "shard-0.bin"]
    assert (art / "notes.txt").read_text() == "keep me" and (art / "mine" / "deep.txt").read_text() == "keep me too"
    (art / "shard-7.bin").write_text("user file with a name the next artifact writes")
    with pytest.raises(FolderNotOursError, match="shard-7.bin"):
        write_folder(art, _writer("c", files=8), owned_files=_owned)
    assert _check_complete(art) == "b" and (art / "shard-7.bin").exists()
    with pytest.raises(FolderNotOursError, match="is a file"):
        write_folder(art / "notes.txt", _writer("d"), owned_files=_owned)


def test_fallback_switch_recovers_after_kill_between_renames(tmp_path, monkeypatch):
    art = write_folder(tmp_path / "art", _writer("a"), owned_files=_owned)
    # simulate the two-rename fallback killed after its first rename, by a process now gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(art, tmp_path / f".art.lsgq-old-{dead.pid}-0123abcd")
    assert fsutil.recover_folder(art) and _check_complete(art) == "a"
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)
    write_folder(art, _writer("b"), owned_files=_owned)
    assert _check_complete(art) == "b" and sorted(p.name for p in tmp_path.iterdir()) == ["art"]


_CHILD = textwrap.dedent("""
    import json, sys, types
    pkg = types.ModuleType("lsgq_compiler"); pkg.__path__ = [sys.argv[1]]; sys.modules["lsgq_compiler"] = pkg
    from pathlib import Path
    from lsgq_compiler.fsutil import write_folder
    dest, i = Path(sys.argv[2]), 0
    def owned(d):
        m = json.loads((d / "manifest.json").read_text())
        return m["files"] + ["manifest.json"]
    def writer(v):
        def w(stage):
            for k in range(4):
                (stage / f"shard-{k}.bin").write_bytes(v.encode() * 200_000)
            (stage / "manifest.json").write_text(json.dumps({"format": "test-artifact", "version": v,
                                                             "files": [f"shard-{k}.bin" for k in range(4)]}))
        return w
    print("ready", flush=True)
    while True:
        write_folder(dest, writer("ab"[i % 2]), owned_files=owned)
        i += 1
""")


def test_sigkill_at_random_points_leaves_old_or_new(tmp_path):
    dest = tmp_path / "art"
    write_folder(dest, _writer("a"), owned_files=_owned)
    (dest / "notes.txt").write_text("keep me")
    rng = random.Random(0)
    seen = set()
    for _ in range(12):
        p = subprocess.Popen([sys.executable, "-c", _CHILD, str(PKG), str(dest)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        seen.add(_check_complete(dest))  # never missing, never half written
        assert (dest / "notes.txt").read_text() == "keep me"
    assert seen <= {"a", "b"}
    write_folder(dest, _writer("c"), owned_files=_owned)  # the next save cleans the leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert sorted(os.listdir(dest)) == ["manifest.json", "notes.txt", "shard-0.bin", "shard-1.bin", "shard-2.bin"]
