"""Reading and writing video clips.

Every function here speaks one frame format: a numpy ``uint8`` array shaped
``(T, H, W, 3)`` in RGB order. A clip on disk is either a folder of PNG/JPEG frames
(sorted by name, numbers compared as numbers) or a video file decoded with PyAV.
Writers go through a temporary name and rename at the end, so a reader never sees a
half-written file.
"""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from ...fsutil import FolderNotOursError, atomic_path, write_folder

__all__ = [
    "ClipError",
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "read_clip",
    "list_clips",
    "write_video",
    "write_frames",
    "fit_clip",
]

FRAME_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".avi", ".mov", ".webm")


class ClipError(ValueError):
    """A clip could not be read, written or shaped; the message says what to do."""


def _err(what: str, todo: str) -> ClipError:
    return ClipError(f"{what}\n  -> {todo}")


def _natural_key(name: str) -> list:
    """Sort key that orders ``frame_2`` before ``frame_10`` (zero-padded names sort as usual)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def check_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    """Validate a clip array and return it unchanged.

    Args:
        frames: ``(T, H, W, 3)`` ``uint8`` RGB.
        what: how to name the array in the error message.

    Raises:
        ClipError: wrong type, dtype or shape.
    """
    if not isinstance(frames, np.ndarray):
        raise _err(f"{what} is a {type(frames).__name__}, not a numpy array.",
                   "Pass frames as a numpy uint8 array shaped (T, H, W, 3).")
    if frames.dtype != np.uint8:
        raise _err(f"{what} has dtype {frames.dtype}, expected uint8.",
                   "Convert with np.clip(x, 0, 255).round().astype(np.uint8) (values on the 0..255 scale).")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = ("A single (H, W, 3) image: add a time axis with x[None]." if frames.ndim == 3 and frames.shape[-1] == 3
                else "Grayscale frames: convert to RGB, e.g. np.repeat(x[..., None], 3, axis=-1)."
                if frames.ndim == 3 else "Pass RGB frames shaped (T, H, W, 3).")
        raise _err(f"{what} has shape {tuple(frames.shape)}, expected (T, H, W, 3) RGB.", hint)
    return frames


def _to_rgb8(img: np.ndarray, path: Path) -> np.ndarray:
    """Turn one frame as decoded by OpenCV (BGR/BGRA/gray, 8 or 16 bit) into (H, W, 3) uint8 RGB."""
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        raise _err(f"{path} is a grayscale (single-channel) frame; clips must be RGB.",
                   "Convert the frames to RGB (e.g. `ffmpeg -i in -pix_fmt rgb24 out` or PIL .convert('RGB')).")
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise _err(f"{path} has an unsupported layout {img.shape}.", "Save the frames as 8-bit RGB PNG or JPEG.")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise _err(f"{path} has sample type {img.dtype}.", "Save the frames as 8-bit RGB PNG or JPEG.")
    rgb = img[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    return np.ascontiguousarray(rgb)


def _read_frames_folder(folder: Path, max_frames: int | None) -> list[np.ndarray]:
    import cv2

    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS
             and not p.name.startswith(".")]
    if not files:
        others = sorted(p.name for p in folder.iterdir())
        seen = f" (it holds {len(others)} other entries, e.g. {others[:3]})" if others else " (it is empty)"
        raise _err(f"{folder} has no PNG/JPEG frames{seen}.",
                   f"Put frames named like 00000.png in the folder, or pass a video file ({', '.join(VIDEO_EXTENSIONS)}).")
    files.sort(key=lambda p: _natural_key(p.name))
    if max_frames is not None:
        files = files[:max_frames]
    frames = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise _err(f"{f} could not be decoded as an image.", "Remove or re-save the file (8-bit RGB PNG or JPEG).")
        frames.append(_to_rgb8(img, f))
    return frames


def _read_video_file(path: Path, max_frames: int | None) -> list[np.ndarray]:
    import av

    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises several FFmpeg error classes
        raise _err(f"{path} could not be opened as a video ({type(e).__name__}: {e}).",
                   "Check the file is a complete video (H.264 mp4 etc.); re-encode it with ffmpeg if needed.") from e
    frames: list[np.ndarray] = []
    try:
        if not container.streams.video:
            raise _err(f"{path} has no video stream.", "Pass a file with a video track, or a folder of frames.")
        stream = container.streams.video[0]
        fmt = stream.codec_context.format
        if fmt is not None and fmt.name.startswith(("gray", "ya", "monob", "monow")):
            raise _err(f"{path} is a grayscale video (pixel format {fmt.name}); clips must be RGB.",
                       "Convert it to colour, e.g. `ffmpeg -i in.mp4 -pix_fmt yuv420p out.mp4`.")
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except ClipError:
        raise
    except Exception as e:
        raise _err(f"{path} could not be decoded ({type(e).__name__}: {e}).",
                   "The file may be truncated or use an unsupported codec; re-encode it with ffmpeg.") from e
    finally:
        container.close()
    return frames


def read_clip(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Read a clip from a folder of frames or a video file.

    Args:
        path: a folder of PNG/JPEG frames (read in name order, ``2.png`` before ``10.png``;
            other files are ignored; an alpha channel is dropped, 16-bit PNGs are scaled to
            8 bits) or a video file that PyAV/FFmpeg can decode.
        max_frames: read at most this many frames from the start (>= 2); ``None`` reads all.

    Returns:
        ``(T, H, W, 3)`` ``uint8`` RGB, ``T >= 2``.

    Raises:
        ClipError: missing path, empty folder, undecodable file, fewer than 2 frames,
            grayscale frames, or frames of different sizes.
    """
    path = Path(path)
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 2):
        raise _err(f"max_frames={max_frames!r}: a clip needs at least 2 frames.", "Pass max_frames >= 2 or None.")
    if not path.exists():
        raise _err(f"{path} does not exist.", "Check the path (a folder of PNG/JPEG frames or a video file).")
    frames = _read_frames_folder(path, max_frames) if path.is_dir() else _read_video_file(path, max_frames)
    if len(frames) < 2:
        raise _err(f"{path} holds {len(frames)} frame(s); a clip needs at least 2.",
                   "Use a clip with two or more frames (a single image is not a video).")
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        first = frames[0].shape[:2]
        bad = next(i for i, f in enumerate(frames) if f.shape[:2] != first)
        raise _err(f"{path}: frames differ in size ({first[1]}x{first[0]} first, "
                   f"{frames[bad].shape[1]}x{frames[bad].shape[0]} at frame {bad}).",
                   "Resize or crop every frame to one size before reading the clip.")
    return np.stack(frames)


def list_clips(root: str | Path) -> list[Path]:
    """List the clips in a folder: each subfolder (of frames) and each video file.

    Args:
        root: a folder whose entries are clips. Video files are recognised by their
            extension (``.mp4 .mkv .avi .mov .webm``); other files and hidden entries are skipped.

    Returns:
        The clip paths, sorted by name.

    Raises:
        ClipError: ``root`` is missing, not a folder, or holds no clips.
    """
    root = Path(root)
    if not root.exists():
        raise _err(f"{root} does not exist.", "Pass a folder holding clip subfolders or video files.")
    if not root.is_dir():
        raise _err(f"{root} is a file, not a folder of clips.", "Pass its parent folder, or read it with read_clip.")
    clips = [p for p in root.iterdir() if not p.name.startswith(".")
             and (p.is_dir() or (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS))]
    if not clips:
        raise _err(f"{root} holds no clips (no subfolders of frames, no {'/'.join(VIDEO_EXTENSIONS)} files).",
                   "Put one subfolder of frames or one video file per clip in it.")
    return sorted(clips, key=lambda p: _natural_key(p.name))


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16, crf: int = 18) -> Path:
    """Write a clip as an H.264 (libx264, yuv420p) mp4, atomically.

    Args:
        path: destination file (its folder is created if needed). An existing file is replaced.
        frames: ``(T, H, W, 3)`` ``uint8`` RGB; H and W must be even (4:2:0 chroma).
        fps: frame rate written in the file.
        crf: x264 constant rate factor (0 lossless in luma, 18 visually near-lossless, 28 lossy).

    Returns:
        ``path`` as a ``Path``.
    """
    import av

    frames = check_frames(frames)
    path = Path(path)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise _err(f"write_video: frames are {w}x{h}; H.264 4:2:0 needs even width and height.",
                   "Crop first (fit_clip(frames, None, multiple=2)), or save PNGs with write_frames.")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(int(crf)), "preset": "medium"}
            for i in range(t):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
                container.mux(stream.encode(vf))
            container.mux(stream.encode(None))
    return path


_FRAME = re.compile(r"^\d{5}\.png$")


def _frame_files(directory: Path) -> list[str]:
    """The frames a previous :func:`write_frames` wrote (``NNNNN.png``); other files are kept."""
    return [p.name for p in directory.iterdir() if _FRAME.match(p.name) and p.is_file()]


def write_frames(directory: str | Path, frames: np.ndarray, overwrite: bool = False) -> Path:
    """Write a clip as a folder of PNG frames ``00000.png, 00001.png, ...``, atomically.

    The frames are written into a hidden staging folder that is switched in atomically
    (:func:`lsgq_compiler.fsutil.write_folder`); with ``overwrite`` the earlier frames
    (``NNNNN.png``) are replaced and any other file in the folder is kept.

    Args:
        directory: destination folder.
        frames: ``(T, H, W, 3)`` ``uint8`` RGB.
        overwrite: replace an existing non-empty ``directory`` (otherwise ClipError).

    Returns:
        ``directory`` as a ``Path``.
    """
    import cv2

    frames = check_frames(frames)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise _err(f"{directory} exists and is a file.", "Pass a folder path for the frames.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise _err(f"{directory} already holds files.", "Pass overwrite=True to replace it, or choose a new folder.")

    def write(stage: Path) -> None:
        for i, frame in enumerate(frames):
            if not cv2.imwrite(str(stage / f"{i:05d}.png"), np.ascontiguousarray(frame[:, :, ::-1])):
                raise _err(f"could not write {directory / f'{i:05d}.png'}.", "Check disk space and permissions.")

    try:
        write_folder(directory, write, owned_files=_frame_files, kind="folder of frames")
    except FolderNotOursError as e:
        raise _err(str(e).split("\n")[0], "Move those files out, or choose a new folder.") from None
    return directory


def fit_clip(hq: np.ndarray, frames: int | None, multiple: int = 16, max_size: int | None = None,
             min_size: int = 64) -> np.ndarray:
    """Crop a clip to a model-friendly shape: first ``frames`` frames, centred spatial crop.

    Args:
        hq: ``(T, H, W, 3)`` ``uint8`` RGB.
        frames: keep the first ``frames`` frames (>= 2); ``None`` keeps all.
        multiple: the cropped H and W are the largest multiples of this that fit.
        max_size: if given, H and W are each also at most this (then rounded down to ``multiple``).
        min_size: ClipError if the cropped H or W would be smaller than this.

    Returns:
        ``(T', H', W', 3)`` ``uint8`` view-free copy, ``H' % multiple == W' % multiple == 0``.
    """
    hq = check_frames(hq, "hq")
    t, h, w, _ = hq.shape
    if multiple < 1:
        raise _err(f"fit_clip: multiple={multiple} must be >= 1.", "Pass the spatial multiple the model needs (e.g. 16).")
    if frames is not None:
        if frames < 2:
            raise _err(f"fit_clip: frames={frames}; a clip needs at least 2.", "Pass frames >= 2 or None.")
        if frames > t:
            raise _err(f"fit_clip: asked for {frames} frames but the clip has {t}.",
                       f"Pass frames <= {t}, or frames=None to keep them all.")
        t = frames
    if t < 2:
        raise _err(f"fit_clip: the clip has {t} frame; a clip needs at least 2.", "Use a clip with two or more frames.")
    cap_h, cap_w = (h, w) if max_size is None else (min(h, max_size), min(w, max_size))
    new_h, new_w = cap_h // multiple * multiple, cap_w // multiple * multiple
    if new_h < min_size or new_w < min_size:
        raise _err(f"fit_clip: {w}x{h} crops to {new_w}x{new_h} (multiple={multiple}, max_size={max_size}), "
                   f"below the {min_size}x{min_size} minimum.",
                   "Use a larger clip, a smaller multiple, or a larger max_size.")
    top, left = (h - new_h) // 2, (w - new_w) // 2
    return np.ascontiguousarray(hq[:t, top:top + new_h, left:left + new_w])
