"""Atomic file and folder writes: the one place lsgq-compiler writes output from.

Guarantees (Linux and other POSIX systems, local file systems):

- :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_path`: the file is
  written under a hidden temporary name in its own folder, flushed to disk, then renamed over
  the destination (``os.replace``). A reader, or a process killed at any point (SIGKILL
  included), sees either the old complete file or the new complete one, never a partial file.
- :func:`write_folder`: a folder of several files (an artifact, a checkpoint) is written
  complete into a hidden staging folder next to the destination and switched in with one
  atomic ``renameat2(RENAME_EXCHANGE)``, so an existing destination is never missing nor half
  written, even when killed. Files in the destination that the previous artifact did not write
  (files the user added) are hard-linked into the new folder before the switch, so they are
  never deleted nor ever absent. A non-empty destination that is not one of ours is refused.
  Where the file system cannot exchange (not Linux, some network file systems) the switch is
  two renames; a kill between them leaves the previous artifact in a hidden
  ``.NAME.lsgq-old-*`` folder, which the next write (or :func:`recover_folder`) moves back.
- Leftover hidden temporaries of killed writes (``.NAME.lsgq-*`` whose process is gone) are
  removed by the next write to the same destination.
- File and folder modes follow the umask, like files written with ``open()`` (not 0600/0700).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import platform
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from .errors import user_error

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_path", "atomic_open", "write_folder",
           "recover_folder", "clean_stale", "exchange", "umask", "FolderNotOursError"]

_TAG = ".lsgq-"  # hidden temporaries: .{name}.lsgq-{kind}-{pid}-{random}{suffix}
_KINDS = ("tmp", "stage", "old")


class FolderNotOursError(FileExistsError):
    """The destination is a non-empty folder (or a file) that is not an artifact of ours."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    """The process umask (read from /proc where possible, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _temp_name(path: Path, kind: str, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}{_TAG}{kind}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


_STALE = re.compile(r"^\.(?P<name>.+)\.lsgq-(?P<kind>tmp|stage|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _stale(path: Path) -> list[tuple[Path, str]]:
    """Hidden temporaries of ``path`` left by writes whose process is gone: ``[(temp, kind)]``."""
    out = []
    try:
        entries = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for p in entries:
        m = _STALE.match(p.name)
        if m and m["name"] == path.name and not _alive(int(m["pid"])):
            out.append((p, m["kind"]))
    return out


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove hidden temporaries of ``path`` left by killed writes (their process is gone).

    A ``.NAME.lsgq-old-*`` folder is moved back to ``path`` instead when ``path`` is missing
    (a kill between the two renames of the fallback switch). Returns what was removed.
    """
    path = Path(path)
    recover_folder(path)
    removed = []
    for p, _ in _stale(path):
        _remove(p)
        removed.append(p)
    return removed


def recover_folder(path: str | os.PathLike) -> bool:
    """If ``path`` is missing and a previous folder survives as ``.NAME.lsgq-old-*`` (the
    fallback switch was killed between its renames), rename it back. Returns True if it did."""
    path = Path(path)
    if os.path.lexists(path):
        return False
    olds = sorted((p for p, kind in _stale(path) if kind == "old"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        with contextlib.suppress(OSError):
            os.rename(old, path)
            _fsync_dir(path.parent)
            return True
    return False


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(p: Path) -> None:
    with open(p, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fp = Path(dirpath) / f
            if not fp.is_symlink():
                _fsync_file(fp)
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path``; on success it replaces ``path``.

    The temporary keeps ``path``'s suffix (for writers that infer the format from it). On an
    exception the temporary is removed and ``path`` is untouched. Stale temporaries of killed
    writes are removed first. The file's mode is ``mode`` if given, else ``0o666 & ~umask``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _temp_name(path, "tmp", path.suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        os.chmod(tmp, (0o666 & ~umask()) if mode is None else mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open()`` for writing, atomically: ``with atomic_open(p, "w") as f: f.write(...)``."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a write mode")
    with atomic_path(path) as tmp, open(tmp, mode.replace("x", "w"), **kwargs) as f:
        yield f
        f.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name, fsync, rename). Returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary name, fsync, rename). Returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


# --- renameat2(RENAME_EXCHANGE) ---------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYSCALL = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}
_exchange_fn: Callable[[bytes, bytes], int] | None | bool = False  # False: not looked up yet


def _lookup_exchange() -> Callable[[bytes, bytes], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return lambda a, b: fn(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    nr = _SYSCALL.get(platform.machine())
    if nr is None:
        return None
    sc = libc.syscall
    sc.restype = ctypes.c_long
    return lambda a, b: sc(ctypes.c_long(nr), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a), ctypes.c_int(_AT_FDCWD),
                           ctypes.c_char_p(b), ctypes.c_uint(_RENAME_EXCHANGE))


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system cannot (the caller falls back); raises
    OSError on other failures.
    """
    global _exchange_fn
    if _exchange_fn is False:
        _exchange_fn = _lookup_exchange()
    if _exchange_fn is None:
        return False
    if _exchange_fn(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


# --- folders ----------------------------------------------------------------------------------

def _carry(src: Path, dst: Path) -> None:
    """Make ``dst`` (not existing) hold ``src``'s content without touching ``src``: hard links for
    files (same data, nothing copied), new folders, copied symlinks; copies where links fail."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copystat(src, dst)
        for child in src.iterdir():
            _carry(child, dst / child.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def write_folder(directory: str | os.PathLike, write_fn: Callable[[Path], object], *,
                 owned_files: Callable[[Path], Iterable[str] | None], kind: str = "artifact of this kind") -> Path:
    """Write a folder of files atomically, keeping the files in it that are not ours.

    Args:
        directory: the destination folder (created, or replaced if it holds an earlier artifact).
        write_fn: ``write_fn(staging)`` writes every file of the new artifact into the empty
            folder ``staging`` under its final (fixed or content-addressed) names; write the
            manifest/config however you like, the switch is all or nothing.
        owned_files: ``owned_files(folder)`` says whether ``folder`` (an existing destination)
            is an artifact of ours: ``None`` if not (for example its manifest is missing, not
            JSON, or has another ``format`` field), else the names (relative paths) of the
            files that artifact wrote, manifest included, read from its manifest. Decide by
            the manifest's content, not by a file name being present.
        kind: what the artifact is called in the refusal, e.g. ``"lsgq artifact"``.

    Refuses (:class:`FolderNotOursError`) a destination that is a file or a non-empty folder for
    which ``owned_files`` returns None, and a new file whose name collides with a file in the
    destination that the old artifact did not write. Entries the old artifact did not write are
    carried over; the old artifact's own files are dropped. Returns the destination.
    """
    directory = Path(directory)
    if directory.is_symlink() and directory.is_dir():
        directory = Path(os.path.realpath(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(directory)
    exists = os.path.lexists(directory)
    owned: set[str] = set()
    if exists:
        if not directory.is_dir():
            raise user_error(f"{directory} exists and is a file", "choose a folder path for the output",
                             FolderNotOursError)
        if any(directory.iterdir()):
            got = owned_files(directory)
            if got is None:
                raise user_error(f"{directory} is a non-empty folder and not an {kind}; "
                                 "refusing to write into it (nothing was changed)",
                                 "choose an empty or new folder", FolderNotOursError)
            owned = {os.path.normpath(str(p)) for p in got}
    stage = _temp_name(directory, "stage")
    stage.mkdir()
    try:
        os.chmod(stage, stat.S_IMODE(directory.stat().st_mode) if exists else 0o777 & ~umask())
        write_fn(stage)
        _umask_modes(stage)  # some writers (safetensors) create 0600 files
        if exists:
            _carry_foreign(directory, stage, owned)
        _fsync_tree(stage)
        if not exists:
            os.rename(stage, directory)
        elif exchange(stage, directory):
            pass  # stage now holds the previous artifact
        else:
            old = _temp_name(directory, "old")
            os.rename(directory, old)
            os.rename(stage, directory)
            stage = old
        _fsync_dir(directory.parent)
    finally:
        _remove(stage)
    return directory


def _umask_modes(root: Path) -> None:
    m = umask()
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            if not (Path(dirpath) / d).is_symlink():
                os.chmod(Path(dirpath) / d, 0o777 & ~m)
        for f in files:
            fp = Path(dirpath) / f
            if not fp.is_symlink():
                os.chmod(fp, (0o777 if os.access(fp, os.X_OK) else 0o666) & ~m)


def _carry_foreign(directory: Path, stage: Path, owned: set[str], rel: str = "") -> None:
    for entry in sorted((directory / rel).iterdir()) if (directory / rel).is_dir() else []:
        r = os.path.normpath(os.path.join(rel, entry.name))
        if r in owned:
            continue
        target = stage / r
        if any(o.startswith(r + os.sep) for o in owned) and entry.is_dir() and not entry.is_symlink():
            # a folder holding files of the old artifact and maybe foreign ones: recurse
            if os.path.lexists(target) and not target.is_dir():
                raise user_error(f"{directory / r} holds files that are not ours but the new artifact writes a "
                                 f"file {r}", "move your files out of the artifact folder", FolderNotOursError)
            target.mkdir(exist_ok=True)
            _carry_foreign(directory, stage, owned, r)
            continue
        if os.path.lexists(target):
            raise user_error(f"{directory / r} was not written by the previous artifact, and the new one writes "
                             f"a file of the same name; refusing to replace it (nothing was changed)",
                             f"move or rename {r} out of {directory}", FolderNotOursError)
        _carry(entry, target)
