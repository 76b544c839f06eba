"""Tiny diffusers transformers with random weights (seeded) and their inputs."""
from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*register_constant.*")


def tiny_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                              out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                              rope_max_seq_len=32).eval()
    return m


def wan_inputs(frames: int = 2, size: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, frames, size, size, generator=g), timestep=torch.tensor([399]),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=g))


def tiny_cogvideox(seed: int = 0):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                       time_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=16,
                                       sample_height=16, sample_frames=9, patch_size=2,
                                       max_text_seq_length=8, use_rotary_positional_embeddings=True).eval()


def cogvideox_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 3, 4, 16, 16, generator=g),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=g), timestep=torch.tensor([399]),
                image_rotary_emb=None)


def tiny_pixart(seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                    num_layers=2, cross_attention_dim=32, caption_channels=24, sample_size=8,
                                    patch_size=2, norm_type="ada_norm_single", use_additional_conditions=False).eval()


def pixart_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(1, 6, 24, generator=g), timestep=torch.tensor([399]))


MODELS = {"wan": (tiny_wan, wan_inputs), "cogvideox": (tiny_cogvideox, cogvideox_inputs),
          "pixart": (tiny_pixart, pixart_inputs)}


@pytest.fixture(params=sorted(MODELS))
def model_and_inputs(request):
    build, inputs = MODELS[request.param]
    return request.param, build(), inputs()
