"""Build the photo bundle that trains the shipped TinyVSR model and makes its held-out test clips.

Sources: the Debian packages ``gnome-backgrounds``, ``plasma-workspace-wallpapers``,
``ukui-wallpapers`` and ``lomiri-wallpapers`` (installed with ``apt-get install -y``; the
metapackage ``lomiri-wallpapers`` brings its photos in ``lomiri-wallpapers-20.04`` and
``lomiri-wallpapers-16.04``, counted as lomiri-wallpapers). Only these allowed packages are ever
installed, listed or read; every other package is refused (others are reserved for evaluation).

Filter rule (photographs in, abstract art and illustrations out): a fixed, explicit list.
Every image the packages install (``dpkg -L``; Debian bookworm versions 43.1-1, 4:5.27.5-2,
20.04.3-1.1, 20.04.0-2) was looked at, one by one, and is named below either in ``PHOTOS``
(camera photographs of real scenes and objects) or in ``ART`` (vector art, renders, gradients,
illustrations, logos, and one photo composite with graphic overlays, ``Infinite-Sea``). Also
dropped: symlinks, KDE preview thumbnails (``contents/screenshot.*``) and the smaller
resolutions of a KDE wallpaper (its largest ``contents/images/WxH`` file is the one listed).
An image in neither list (another package version) is dropped as "not reviewed"; a listed
photo whose sha256 differs from the pinned one is kept and flagged in the manifest.

Result on bookworm (distinct images; resolution variants, thumbnails and symlinks not counted):

=============================  ======  =====  ========
package                        images  kept   dropped
=============================  ======  =====  ========
gnome-backgrounds              25      0      25
plasma-workspace-wallpapers    33      11     22
ukui-wallpapers                12      0      12
lomiri-wallpapers              20      15     5
=============================  ======  =====  ========

Split: ``plasma-workspace-wallpapers`` is held out (``--heldout``): its 11 photos make the
project's own unseen test clips (``examples/make_heldout_clips.py``) and never train. The 15
lomiri photos are the training photos. (lomiri trains rather than plasma: more photos, and more
texture; several plasma photos are fog and sky.)

Bundle: each photo downscaled (area) to a long side of at most ``--long-side`` (1536) pixels,
JPEG quality ``--quality`` (92, 4:4:4 chroma), ``photos/<name>.jpg`` plus ``manifest.json``
(package, installed path, sha256 of the source and of the JPEG, split, size; the dropped files
with their reasons; per-package counts). 10.6 MB on bookworm. Written atomically; never commit it.

Usage::

    python examples/photo_bundle.py --out .data/photo_bundle          # apt-get install, then build
    python examples/photo_bundle.py --no-apt --out .data/photo_bundle  # packages already installed
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGES: tuple[str, ...] = ("gnome-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers", "lomiri-wallpapers")
#: Debian packages whose files belong to each source package (the lomiri metapackage's photos live in its dependencies).
DEBS: dict[str, tuple[str, ...]] = {
    "gnome-backgrounds": ("gnome-backgrounds",),
    "plasma-workspace-wallpapers": ("plasma-workspace-wallpapers",),
    "ukui-wallpapers": ("ukui-wallpapers",),
    "lomiri-wallpapers": ("lomiri-wallpapers", "lomiri-wallpapers-20.04", "lomiri-wallpapers-16.04"),
}
HELDOUT_PACKAGE = "plasma-workspace-wallpapers"
SHORT = {"gnome-backgrounds": "gnome", "plasma-workspace-wallpapers": "plasma", "ukui-wallpapers": "ukui",
         "lomiri-wallpapers": "lomiri"}
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".svg", ".jxl")

_KDE = "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
_BG = "/usr/share/backgrounds/{}"
#: The photographs: package -> {image key: (installed path, first 16 hex digits of its sha256)}.
#: The key is the KDE wallpaper name (plus " (dark)" for its dark variant) or the file name.
PHOTOS: dict[str, dict[str, tuple[str, str]]] = {
    "plasma-workspace-wallpapers": {
        "BytheWater": (_KDE.format("BytheWater"), "c272434ef39f2abf"),      # wooden jetty, lake
        "ColdRipple": (_KDE.format("ColdRipple"), "05bef6722fc0ed81"),      # pier in fog (gray)
        "ColorfulCups": (_KDE.format("ColorfulCups"), "6e0f3a72feb5a4a9"),  # plastic cups
        "DarkestHour": (_KDE.format("DarkestHour"), "8e3703fae3a3c217"),    # lake at dusk
        "EveningGlow": (_KDE.format("EveningGlow"), "586682dcb362b9f6"),    # rowing boats, sunset
        "FallenLeaf": (_KDE.format("FallenLeaf"), "95603a6560c7e8d5"),      # maple leaves
        "Grey": (_KDE.format("Grey"), "88c31d8944b7e693"),                  # facade (black and white)
        "Kite": (_KDE.format("Kite"), "bdca288ce296a981"),                  # sky, clouds, kite
        "OneStandsOut": (_KDE.format("OneStandsOut"), "cb507baf1dafdcae"),  # plants from above
        "Path": (_KDE.format("Path"), "7477457d7f17b736"),                  # forest path
        "summer_1am": (_KDE.format("summer_1am"), "c868b50789591dd4"),      # lake at night
    },
    "lomiri-wallpapers": {
        "Kleiber_by_Lukas_Baubkus.jpg": (_BG.format("Kleiber_by_Lukas_Baubkus.jpg"), "6572410c09f4492c"),
        "Bridge_by_Sander_Klootwijk.jpg": (_BG.format("Bridge_by_Sander_Klootwijk.jpg"), "bd86b081f9975e2b"),
        "Dragonfly_by_Bolly.jpg": (_BG.format("Dragonfly_by_Bolly.jpg"), "af5af17841009732"),
        "Picture_0B_by_freespace.jpg": (_BG.format("Picture_0B_by_freespace.jpg"), "c8c0ab18e48d9e04"),
        "Picture_1A_by_freespace.jpg": (_BG.format("Picture_1A_by_freespace.jpg"), "89e86af38d04daae"),
        "Wine_by_Jakkub_Mede.jpg": (_BG.format("Wine_by_Jakkub_Mede.jpg"), "d2e96e6d4da40dd8"),
        "aitzgorri_by_Aitzol_Berasategi.jpg": (_BG.format("aitzgorri_by_Aitzol_Berasategi.jpg"), "66268e7b48f8854d"),
        "analogpattern_by_Peter_Nerlich.jpg": (_BG.format("analogpattern_by_Peter_Nerlich.jpg"), "15372488a192b2be"),
        "free_by_Peter_Nerlich.jpg": (_BG.format("free_by_Peter_Nerlich.jpg"), "85a5453c2fed514c"),
        "friends_by_Aitzol_Berasategi.jpg": (_BG.format("friends_by_Aitzol_Berasategi.jpg"), "cc40e313c74e421e"),
        "greentock_by_Peter_Nerlich.jpg": (_BG.format("greentock_by_Peter_Nerlich.jpg"), "e7b20e2db9dcd6e2"),
        "life_by_Aitzol_Berasategi.jpg": (_BG.format("life_by_Aitzol_Berasategi.jpg"), "4c119350ead80201"),
        "picosdeeuropa_by_Aitzol_Berasategi.jpg": (_BG.format("picosdeeuropa_by_Aitzol_Berasategi.jpg"),
                                                   "414d0072b2f6f2c5"),
        "seeding_by_Clements_Engelhardt.jpg": (_BG.format("seeding_by_Clements_Engelhardt.jpg"), "a5634d1ab5e41a35"),
        "sunset_by_Aitzol_Berasategi.jpg": (_BG.format("sunset_by_Aitzol_Berasategi.jpg"), "474dab6a4b9f94dc"),
    },
}
#: Looked at and dropped as abstract art, renders, gradients or illustrations (same keys as PHOTOS).
ART: dict[str, tuple[str, ...]] = {
    "gnome-backgrounds": tuple(f"{n}-{v}.{e}" for n, e in (("adwaita", "webp"), ("blobs", "svg"), ("drool", "svg"),
                                                           ("dune", "svg"), ("field", "svg"), ("grid", "webp"),
                                                           ("licorice", "webp"), ("pixels", "webp"),
                                                           ("symbolic", "webp"), ("truchet", "webp"),
                                                           ("vnc", "webp"), ("wood", "webp")) for v in "dl")
    + ("oceans.svg",),
    "plasma-workspace-wallpapers": ("Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "Flow (dark)",
                                    "FlyingKonqui", "Honeywave", "IceCold", "Kay", "Kay (dark)", "Kokkini", "MilkyWay",
                                    "Opal", "PastelHills", "Patak", "Patak (dark)", "SafeLanding", "Shell", "Volna"),
    "ukui-wallpapers": ("2004default.jpg", "calla.png", "city.png", "desert.png", "firstgeneration.jpg",
                        "fluent-color.png", "focal-ubuntukylin.png", "goldfish.png", "rhythm.jpg", "rollpaper.png",
                        "string.jpg", "the-mouse.jpg"),
    "lomiri-wallpapers": ("warty-final-ubuntu.png", "Fossa_by_Jasper_Roks.jpg", "Infinite-Sea_by_Aury88.jpg",
                          "Painting-Colors_by__herobrine7gamer.jpg", "umang_by_Abhishek_Mudgal.jpg"),
}
_KDE_IMAGE = re.compile(r"^/usr/share/wallpapers/([^/]+)/contents/(images|images_dark)/(\d+)x(\d+)\.\w+$")


@dataclass(frozen=True)
class Decision:
    """What the rule says about one installed file: ``keep`` or a drop reason, and the image key."""

    package: str
    path: str
    key: str
    keep: bool
    reason: str


def image_key(path: str) -> str:
    """The image a file shows: a KDE wallpaper's name (+ `` (dark)``) for all its resolutions, else the file name."""
    m = _KDE_IMAGE.match(path)
    if m:
        return m.group(1) + (" (dark)" if m.group(2) == "images_dark" else "")
    return os.path.basename(path)


def classify(package: str, path: str, is_link: bool = False) -> Decision:
    """Apply the fixed rule to one installed image file of ``package`` (see the module docstring)."""
    if package not in PACKAGES:
        raise ValueError(f"{package!r} is not one of the allowed packages {PACKAGES}")
    key = image_key(path)
    photos = PHOTOS.get(package, {})
    if is_link:
        return Decision(package, path, key, False, "symlink (duplicate of another file)")
    if "/contents/screenshot." in path:
        return Decision(package, path, key, False, "preview thumbnail")
    if key in photos:
        if photos[key][0] == path:
            return Decision(package, path, key, True, "photograph")
        return Decision(package, path, key, False, "smaller resolution of a kept photograph")
    if key in ART.get(package, ()):
        return Decision(package, path, key, False, "abstract art / illustration")
    return Decision(package, path, key, False, "not reviewed (not in the fixed lists): dropped")


def _check_allowed(packages: tuple[str, ...]) -> None:
    for p in packages:
        if p not in PACKAGES:
            raise SystemExit(f"{p} is not one of the allowed training packages ({', '.join(PACKAGES)})")


def apt_install(packages: tuple[str, ...] = PACKAGES) -> None:
    """``apt-get install -y --no-install-recommends`` the packages (root, or sudo when available)."""
    _check_allowed(packages)
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0 and shutil.which("sudo"):
        cmd = ["sudo", *cmd]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env)
    if r.returncode:
        raise SystemExit(f"apt-get failed (exit {r.returncode}); try `apt-get update` first, or install the "
                         f"packages yourself and pass --no-apt")


def installed_images(packages: tuple[str, ...] = PACKAGES) -> list[tuple[str, str, bool]]:
    """``(package, path, is_symlink)`` for every image file ``dpkg -L`` lists for the packages (and their DEBS)."""
    _check_allowed(packages)
    out = []
    for pkg in packages:
        for deb in DEBS[pkg]:
            r = subprocess.run(["dpkg", "-L", deb], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"{deb} is not installed (dpkg -L failed): run without --no-apt, or "
                                 f"`apt-get install -y {pkg}`")
            for f in sorted(set(r.stdout.split("\n"))):
                if f.lower().endswith(IMAGE_EXT) and os.path.lexists(f) and not os.path.isdir(f):
                    out.append((pkg, f, os.path.islink(f)))
    return out


def listed_images(root: Path) -> list[tuple[str, str, bool]]:
    """Without dpkg: the listed photographs found under ``root`` (``root/usr/share/...``), for tests and copies."""
    out = []
    for pkg in PACKAGES:
        for path, _ in PHOTOS.get(pkg, {}).values():
            f = root / path.lstrip("/")
            if f.is_file():
                out.append((pkg, path, f.is_symlink()))
    return out


def _downscale(img: np.ndarray, long_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    f = long_side / max(h, w)
    if f >= 1.0:
        return img
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _jpeg(img_bgr: np.ndarray, quality: int) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):  # 4:4:4: no chroma subsampling of the ground truth
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", img_bgr, params)
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def build_bundle(found: list[tuple[str, str, bool]], out: str | Path, root: str | Path = "/",
                 heldout: str = HELDOUT_PACKAGE, long_side: int = 1536, quality: int = 92) -> dict:
    """Filter ``found`` by :func:`classify` and write the bundle folder ``out`` atomically.

    Args:
        found: ``(package, installed path, is_symlink)`` per image file.
        out: the bundle folder (created, or replaced if it holds an earlier bundle).
        root: prefix of the installed paths on this machine (``/``; a temporary folder in tests).
        heldout: the package whose photos form the ``heldout`` split; the others' are ``train``.
        long_side: largest output side in pixels (area downscaling; smaller photos are kept as they are).
        quality: JPEG quality.

    Returns:
        The manifest (also written as ``out/manifest.json``).
    """
    import cv2

    from lsgq_compiler.fsutil import file_sha256, write_folder
    from lsgq_compiler.vsr.data.bundle import FORMAT, MANIFEST, bundle_owned_files

    if heldout not in PACKAGES:
        raise SystemExit(f"--heldout {heldout!r} is not one of {PACKAGES}")
    root = Path(root)
    decisions = [classify(p, f, link) for p, f, link in found]
    counts: dict[str, dict[str, int]] = {}
    for pkg in PACKAGES:
        ds = [d for d in decisions if d.package == pkg]
        images = {d.key for d in ds if d.reason in ("photograph", "abstract art / illustration")
                  or d.reason.startswith("not reviewed")}
        counts[pkg] = {"files": len(ds), "images": len(images), "kept": sum(d.keep for d in ds),
                       "dropped_art": len({d.key for d in ds if d.reason == "abstract art / illustration"}),
                       "dropped_unreviewed": len({d.key for d in ds if d.reason.startswith("not reviewed")})}
    photos, encoded = [], {}
    for d in sorted((d for d in decisions if d.keep), key=lambda d: (d.package, d.key)):
        src = root / d.path.lstrip("/")
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{src} could not be decoded")
        small = _downscale(img, long_side)
        data = _jpeg(small, quality)
        name = f"{SHORT[d.package]}_{Path(d.key).stem}"
        rel = f"photos/{name}.jpg"
        sha = file_sha256(src)
        photos.append({"name": name, "package": d.package, "source": d.path, "source_sha256": sha,
                       "source_sha256_pinned": sha.startswith(PHOTOS[d.package][d.key][1]),
                       "source_size": [int(img.shape[1]), int(img.shape[0])], "file": rel,
                       "sha256": hashlib.sha256(data).hexdigest(),
                       "split": "heldout" if d.package == heldout else "train",
                       "width": int(small.shape[1]), "height": int(small.shape[0])})
        encoded[rel] = data
    if not any(p["split"] == "train" for p in photos) or not any(p["split"] == "heldout" for p in photos):
        raise SystemExit(f"the bundle needs train and heldout photos; found {len(photos)} photos "
                         f"({', '.join(sorted({p['package'] for p in photos})) or 'none'})")
    manifest = {"format": FORMAT, "long_side": long_side, "quality": quality, "heldout_package": heldout,
                "rule": "fixed lists PHOTOS / ART in examples/photo_bundle.py (images looked at one by one)",
                "counts": counts, "photos": photos,
                "dropped": [{"package": d.package, "source": d.path, "reason": d.reason}
                            for d in decisions if not d.keep],
                "bytes": sum(len(b) for b in encoded.values())}

    def write(stage: Path) -> None:
        (stage / "photos").mkdir()
        for rel, data in encoded.items():
            (stage / rel).write_bytes(data)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    write_folder(out, write, owned_files=bundle_owned_files, kind="photo bundle")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".data/photo_bundle", help="bundle folder (keep it out of git)")
    ap.add_argument("--no-apt", action="store_true", help="do not run apt-get (the packages are installed)")
    ap.add_argument("--root", default="", help="read the listed photos under this folder instead of dpkg's paths "
                                               "(no dpkg, no apt; for tests and copied trees)")
    ap.add_argument("--heldout", default=HELDOUT_PACKAGE, choices=PACKAGES)
    ap.add_argument("--long-side", type=int, default=1536)
    ap.add_argument("--quality", type=int, default=92)
    args = ap.parse_args(argv)
    if args.root:
        found = listed_images(Path(args.root))
    else:
        if not args.no_apt:
            apt_install()
        found = installed_images()
    m = build_bundle(found, args.out, args.root or "/", args.heldout, args.long_side, args.quality)
    print(f"{'package':30s} {'images':>6s} {'kept':>5s} {'art':>5s} {'unrev.':>6s}  split")
    for pkg, c in m["counts"].items():
        print(f"{pkg:30s} {c['images']:6d} {c['kept']:5d} {c['dropped_art']:5d} {c['dropped_unreviewed']:6d}  "
              f"{'heldout' if pkg == m['heldout_package'] else 'train'}")
    unpinned = [p["name"] for p in m["photos"] if not p["source_sha256_pinned"]]
    if unpinned:
        print(f"warning: {len(unpinned)} source file(s) differ from the pinned sha256 (another package version?): "
              f"{', '.join(unpinned)}")
    n_train = sum(p["split"] == "train" for p in m["photos"])
    print(f"wrote {args.out}: {len(m['photos'])} photos ({n_train} train, {len(m['photos']) - n_train} heldout), "
          f"{m['bytes'] / 1e6:.1f} MB of JPEG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
