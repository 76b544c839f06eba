"""Clip reading/writing and cropping (lsgq_compiler.vsr.data.io)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lsgq_compiler.vsr.data import ClipError, fit_clip, list_clips, load_photo, pan_zoom_clip, read_clip, write_frames, \
    write_video
from lsgq_compiler.vsr.metrics import psnr_video


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return pan_zoom_clip(load_photo("astronaut"), 6, (64, 96), seed=3)


def _two_lines(e: pytest.ExceptionInfo) -> None:
    msg = str(e.value)
    assert "\n" in msg and "->" in msg.splitlines()[-1], f"error should say what to do on a second line: {msg!r}"


def test_frames_folder_roundtrip_is_exact(tmp_path, clip):
    out = write_frames(tmp_path / "clip", clip)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(len(clip))]
    back = read_clip(out)
    assert back.dtype == np.uint8 and back.shape == clip.shape
    assert np.array_equal(back, clip)


def test_frames_sorted_by_number_not_text(tmp_path, clip):
    folder = tmp_path / "f"
    folder.mkdir()
    for i in (10, 2, 1):  # written out of order; "10" sorts before "2" as text
        cv2.imwrite(str(folder / f"frame_{i}.png"), clip[i % len(clip)][:, :, ::-1])
    (folder / "notes.txt").write_text("not a frame")
    back = read_clip(folder)
    assert np.array_equal(back, clip[[1, 2, 10 % len(clip)]])


def test_jpeg_frames_and_alpha_are_read_as_rgb(tmp_path, clip):
    folder = tmp_path / "j"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), clip[i][:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    back = read_clip(folder)
    assert back.shape == (3,) + clip.shape[1:]
    assert psnr_video(clip[:3], back) > 35
    rgba = tmp_path / "a"
    rgba.mkdir()
    for i in range(2):
        bgra = np.concatenate([clip[i][:, :, ::-1], np.full(clip.shape[1:3] + (1,), 128, np.uint8)], axis=2)
        cv2.imwrite(str(rgba / f"{i}.png"), bgra)
    assert np.array_equal(read_clip(rgba), clip[:2])


def test_mp4_roundtrip_and_max_frames(tmp_path, clip):
    path = write_video(tmp_path / "v.mp4", clip, fps=16)
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary left behind
    back = read_clip(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert psnr_video(clip, back) > 33  # CRF 18: near-lossless
    assert read_clip(path, max_frames=3).shape[0] == 3
    assert np.array_equal(read_clip(path, max_frames=3), back[:3])


def test_max_frames_on_folder(tmp_path, clip):
    write_frames(tmp_path / "c", clip)
    assert np.array_equal(read_clip(tmp_path / "c", max_frames=2), clip[:2])
    with pytest.raises(ClipError, match="at least 2") as e:
        read_clip(tmp_path / "c", max_frames=1)
    _two_lines(e)


def test_missing_path(tmp_path):
    with pytest.raises(ClipError, match="does not exist") as e:
        read_clip(tmp_path / "nope.mp4")
    _two_lines(e)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="no PNG/JPEG frames.*empty") as e:
        read_clip(tmp_path / "empty")
    _two_lines(e)


def test_unreadable_video_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ClipError, match="could not be opened as a video") as e:
        read_clip(bad)
    _two_lines(e)


def test_unreadable_frame(tmp_path, clip):
    folder = tmp_path / "f"
    write_frames(folder, clip[:2])
    (folder / "00002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ClipError, match="00002.png could not be decoded") as e:
        read_clip(folder)
    _two_lines(e)


def test_one_frame_clip(tmp_path, clip):
    folder = tmp_path / "one"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), clip[0][:, :, ::-1])
    with pytest.raises(ClipError, match="1 frame.*at least 2") as e:
        read_clip(folder)
    _two_lines(e)


def test_grayscale_frames(tmp_path, clip):
    folder = tmp_path / "gray"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), clip[i, :, :, 0])
    with pytest.raises(ClipError, match="grayscale.*RGB") as e:
        read_clip(folder)
    assert "Convert" in str(e.value)


def test_grayscale_video(tmp_path):
    import av

    path = tmp_path / "gray.mkv"
    with av.open(str(path), "w") as c:  # FFV1 keeps the gray pixel format (libx264 would convert it)
        s = c.add_stream("ffv1", rate=16)
        s.width, s.height, s.pix_fmt = 64, 64, "gray"
        for i in range(3):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((64, 64), 40 * i, np.uint8), format="gray")))
        c.mux(s.encode(None))
    with pytest.raises(ClipError, match="grayscale video") as e:
        read_clip(path)
    _two_lines(e)


def test_inconsistent_frame_sizes(tmp_path, clip):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), clip[0][:, :, ::-1])
    cv2.imwrite(str(folder / "1.png"), clip[1, :32, :32, ::-1])
    with pytest.raises(ClipError, match="differ in size") as e:
        read_clip(folder)
    _two_lines(e)


def test_list_clips(tmp_path, clip):
    write_frames(tmp_path / "b_frames", clip[:2])
    write_video(tmp_path / "a.mp4", clip[:2])
    (tmp_path / "README.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    assert [p.name for p in list_clips(tmp_path)] == ["a.mp4", "b_frames"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="holds no clips"):
        list_clips(tmp_path / "empty")
    with pytest.raises(ClipError, match="does not exist"):
        list_clips(tmp_path / "missing")


def test_write_frames_refuses_to_overwrite_unless_asked(tmp_path, clip):
    write_frames(tmp_path / "c", clip)
    with pytest.raises(ClipError, match="already holds files"):
        write_frames(tmp_path / "c", clip[:2])
    write_frames(tmp_path / "c", clip[:2], overwrite=True)
    assert read_clip(tmp_path / "c").shape[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporaries left behind


def test_writers_validate_frames(tmp_path, clip):
    with pytest.raises(ClipError, match="even width and height"):
        write_video(tmp_path / "odd.mp4", clip[:, :63])
    with pytest.raises(ClipError, match="dtype float"):
        write_frames(tmp_path / "f", clip.astype(np.float32))
    with pytest.raises(ClipError, match="Grayscale"):
        write_frames(tmp_path / "f", clip[..., 0])
    assert not (tmp_path / "odd.mp4").exists() and not (tmp_path / "f").exists()


def test_fit_clip_center_crop():
    x = np.random.default_rng(0).integers(0, 256, (10, 100, 150, 3), dtype=np.uint8)
    y = fit_clip(x, 4, multiple=16)
    assert y.shape == (4, 96, 144, 3)
    assert np.array_equal(y, x[:4, 2:98, 3:147])
    z = fit_clip(x, None, multiple=16, max_size=80)
    assert z.shape == (10, 80, 80, 3) and np.array_equal(z, x[:, 10:90, 35:115])
    assert fit_clip(x, None, multiple=4, min_size=16).shape == (10, 100, 148, 3)


def test_fit_clip_errors():
    assert fit_clip(np.zeros((3, 70, 200, 3), np.uint8), None).shape == (3, 64, 192, 3)
    with pytest.raises(ClipError, match="crops to 192x48.*below the 64x64"):
        fit_clip(np.zeros((3, 60, 200, 3), np.uint8), None, multiple=16)
    with pytest.raises(ClipError, match="asked for 5 frames but the clip has 3"):
        fit_clip(np.zeros((3, 128, 128, 3), np.uint8), 5)
    with pytest.raises(ClipError, match="at least 2"):
        fit_clip(np.zeros((3, 128, 128, 3), np.uint8), 1)
    with pytest.raises(ClipError, match="below the 64x64"):
        fit_clip(np.zeros((3, 128, 128, 3), np.uint8), None, max_size=48)
