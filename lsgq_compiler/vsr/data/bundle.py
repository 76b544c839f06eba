"""Photo bundles: downscaled photographs with a JSON manifest, for training and held-out clips.

A bundle is a folder written by ``examples/photo_bundle.py``::

    manifest.json         {"format": "lsgq-photo-bundle/1", "photos": [...], ...}
    photos/<name>.jpg     RGB JPEGs, long side <= the bundle's ``long_side``

Each manifest entry names its source (Debian package, installed path, sha256 of the source
file) and its split: ``train`` (may train models) or ``heldout`` (never trains: the project's
own unseen test set). Readers check the format and, on request, every JPEG's sha256.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...errors import user_error
from ...fsutil import file_sha256

__all__ = ["FORMAT", "MANIFEST", "SPLITS", "BundlePhoto", "read_bundle", "bundle_photos", "load_bundle_photo",
           "bundle_owned_files"]

FORMAT = "lsgq-photo-bundle/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class BundlePhoto:
    """One photograph of a bundle.

    Attributes:
        name: unique readable name, e.g. ``lomiri_Bridge_by_Sander_Klootwijk``.
        package: the Debian package it came from.
        source: its installed path (``/usr/share/...``).
        source_sha256: sha256 of the installed file.
        file: the JPEG's path inside the bundle (``photos/<name>.jpg``).
        sha256: sha256 of that JPEG.
        split: ``train`` or ``heldout``.
        width, height: the JPEG's size in pixels.
    """

    name: str
    package: str
    source: str
    source_sha256: str
    file: str
    sha256: str
    split: str
    width: int
    height: int


def _manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise user_error(f"{root} is not a photo bundle (no {MANIFEST})",
                         "build one with `python examples/photo_bundle.py --out DIR` and pass DIR")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise user_error(f"{path} is not readable JSON ({e})", "rebuild the bundle with examples/photo_bundle.py")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise user_error(f"{path} has format {data.get('format') if isinstance(data, dict) else None!r}, "
                         f"expected {FORMAT!r}", "rebuild the bundle with examples/photo_bundle.py")
    return data


def read_bundle(root: str | Path, verify: bool = False) -> list[BundlePhoto]:
    """The photos of a bundle, in manifest order.

    Args:
        root: the bundle folder.
        verify: also check that every JPEG exists and matches its recorded sha256.

    Raises:
        ValueError: not a bundle, a malformed entry, an unknown split, or (``verify``) a missing
            or altered JPEG.
    """
    root = Path(root)
    data = _manifest(root)
    photos = []
    for i, e in enumerate(data.get("photos", [])):
        try:
            p = BundlePhoto(**{k: e[k] for k in BundlePhoto.__dataclass_fields__})
        except (KeyError, TypeError) as err:
            raise user_error(f"{root / MANIFEST}: photo entry {i} is malformed ({err})",
                             "rebuild the bundle with examples/photo_bundle.py")
        if p.split not in SPLITS:
            raise user_error(f"{root / MANIFEST}: photo {p.name!r} has split {p.split!r}", f"use one of {SPLITS}")
        if verify:
            f = root / p.file
            if not f.is_file() or file_sha256(f) != p.sha256:
                raise user_error(f"bundle photo {f} is {'missing' if not f.is_file() else 'altered'}",
                                 "rebuild the bundle with examples/photo_bundle.py")
        photos.append(p)
    if len({p.name for p in photos}) != len(photos):
        raise user_error(f"{root / MANIFEST} names a photo twice", "rebuild the bundle with examples/photo_bundle.py")
    return photos


def bundle_photos(root: str | Path, split: str, verify: bool = False) -> list[BundlePhoto]:
    """The photos of one split (``train`` or ``heldout``), sorted by name; ValueError if there are none."""
    if split not in SPLITS:
        raise user_error(f"unknown bundle split {split!r}", f"use one of {SPLITS}")
    photos = sorted((p for p in read_bundle(root, verify) if p.split == split), key=lambda p: p.name)
    if not photos:
        raise user_error(f"bundle {root} has no {split!r} photos", "rebuild it with examples/photo_bundle.py")
    return photos


@lru_cache(maxsize=64)
def _load(path: str) -> np.ndarray:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise user_error(f"bundle photo {path} could not be decoded",
                         "rebuild the bundle with examples/photo_bundle.py")
    rgb = np.ascontiguousarray(img[:, :, ::-1])
    rgb.setflags(write=False)
    return rgb


def load_bundle_photo(root: str | Path, photo: BundlePhoto | str) -> np.ndarray:
    """Decode one bundle photo (an entry, or its ``file`` path inside the bundle).

    Returns:
        ``(H, W, 3)`` uint8 RGB, a fresh writable copy (decoded files are cached per process).
    """
    return _load(str(Path(root) / (photo.file if isinstance(photo, BundlePhoto) else photo))).copy()


def bundle_owned_files(folder: Path) -> list[str] | None:
    """For :func:`lsgq_compiler.fsutil.write_folder`: the files an earlier bundle in ``folder`` wrote, else None."""
    try:
        data = _manifest(Path(folder))
    except ValueError:
        return None
    return [MANIFEST] + [str(e.get("file")) for e in data.get("photos", []) if isinstance(e, dict)]
