"""The shipped TinyVSR model: size, loading, latent round trip, determinism, quality vs bicubic."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lsgq_compiler.vsr.models import (DEFAULT_WEIGHTS, TinyVSR, build_tiny_vsr, load_tiny_vsr, save_tiny_vsr,
                                  tiny_vsr_config, upscale_clip)


def _small_config() -> dict:
    cfg = tiny_vsr_config()
    cfg["transformer"].update(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=1, text_dim=16,
                              freq_dim=16, rope_max_seq_len=64)
    cfg["text_tokens"] = 3
    return cfg


@pytest.fixture(scope="module")
def vsr() -> TinyVSR:
    return load_tiny_vsr()


def test_size_limits(vsr: TinyVSR) -> None:
    n = sum(p.numel() for p in vsr.parameters())
    assert 5_000_000 < n <= 20_000_000
    assert DEFAULT_WEIGHTS.stat().st_size <= 40 * 2**20
    cfg = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert cfg["transformer"] == tiny_vsr_config()["transformer"]
    assert vsr.text_embeds.shape == (1, cfg["text_tokens"], cfg["transformer"]["text_dim"])
    assert vsr.timestep == cfg["timestep"] == 399


def test_shapes_and_inputs(vsr: TinyVSR) -> None:
    lq = torch.rand(2, 3, 2, 6, 10)
    inputs = vsr.transformer_inputs(lq)
    assert inputs["hidden_states"].shape == (2, 48, 2, 6, 10)
    assert inputs["timestep"].tolist() == [399, 399]
    assert inputs["encoder_hidden_states"].shape == (2, 8, 64)
    with torch.no_grad():
        out = vsr(lq)
    assert out.shape == (2, 3, 2, 24, 40) and out.dtype == torch.float32
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    with torch.no_grad():  # odd sizes are padded to whole patches and cropped back
        assert vsr(torch.rand(1, 3, 1, 5, 7)).shape == (1, 3, 1, 20, 28)
    clip = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    up = upscale_clip(vsr, clip)
    assert up.shape == (2, 24, 32, 3) and up.dtype == np.uint8


def test_latent_round_trip(vsr: TinyVSR) -> None:
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 3, 16, 24, generator=g)
    lat = vsr.video_to_latent(video)
    assert lat.shape == (2, 48, 3, 4, 6)
    assert torch.equal(vsr.latent_to_video(lat), video)  # pixel shuffle is an exact permutation
    assert torch.equal(vsr.video_to_latent(vsr.latent_to_video(lat)), lat)
    lq = torch.rand(1, 3, 2, 4, 6, generator=g)
    bic = torch.nn.functional.interpolate(lq[0].transpose(0, 1), scale_factor=4, mode="bicubic",
                                          align_corners=False)  # (T, 3, 16, 24)
    lat = vsr.lq_to_latent(lq)
    assert lat.shape == (1, 48, 2, 4, 6)
    assert torch.equal(vsr.latent_to_video(lat)[0].transpose(0, 1), bic.clamp(0, 1))
    assert torch.equal(vsr.video_to_latent(bic.transpose(0, 1)[None]), lat)


def test_deterministic_and_stand_in(vsr: TinyVSR) -> None:
    lq = torch.rand(1, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = vsr(lq), vsr(lq)
        assert torch.equal(a, b)
        # A stand-in transformer gets the same kwargs; tuple and tensor returns both work.
        seen = {}

        def stand_in(**kw):
            seen.update(kw)
            return vsr.transformer(**kw, return_dict=False)[0]

        assert torch.equal(vsr(lq, transformer=stand_in), a)
        assert sorted(seen) == ["encoder_hidden_states", "hidden_states", "timestep"]
        zero = vsr(lq, transformer=lambda **kw: (torch.zeros_like(kw["hidden_states"]),))
        assert torch.allclose(zero, vsr.latent_to_video(vsr.lq_to_latent(lq)), atol=1e-6)


def test_untrained_model_is_bicubic() -> None:
    m = build_tiny_vsr(_small_config(), seed=0)
    lq = torch.rand(1, 3, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(m(lq), m.latent_to_video(m.lq_to_latent(lq)), atol=1e-6)


def test_missing_and_mismatched_weights(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="train_tiny_vsr.py"):
        load_tiny_vsr(tmp_path / "nope.safetensors")
    cfg = _small_config()
    m = build_tiny_vsr(cfg, seed=3)
    path = save_tiny_vsr(m, tmp_path / "small.safetensors", cfg)
    back = load_tiny_vsr(path)
    lq = torch.rand(1, 3, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(back(lq), m(lq), atol=1e-2)
    cfg["transformer"]["ffn_dim"] = 48  # the JSON no longer matches the tensors
    path.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        load_tiny_vsr(path)


def test_beats_bicubic_on_eval_clips(vsr: TinyVSR) -> None:
    """All six eval clips (held-out photos), first 4 frames each: a cheap version of the full check
    (8 frames: +1.79 dB mean, see examples/train_tiny_vsr.py)."""
    from lsgq_compiler.vsr.data import bicubic_upscale, eval_set

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 10 * math.log10(255.0 ** 2 / float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))

    gains = []
    for c in eval_set():
        hq, lq = c.hq[:4], c.lq[:4]
        gains.append(psnr(hq, upscale_clip(vsr, lq)) - psnr(hq, bicubic_upscale(lq)))
    assert min(gains) > 0.0, gains
    assert float(np.mean(gains)) >= 1.0, gains
