"""The shipped default model: a tiny one-step video super-resolution (x4) transformer.

``TinyVSR`` follows the DOVE recipe for one-step diffusion VSR, at toy scale, with the very
backbone class LSGQuant quantizes (diffusers' ``WanTransformer3DModel``):

1. upsample the low-quality (LQ) clip x4 with bicubic interpolation;
2. map it to a "latent" by space-to-depth: pixel-unshuffle by 4 turns RGB at 4h x 4w into
   48 channels at h x w (the LQ resolution);
3. run the transformer ONCE, at a fixed timestep (399) with a fixed "text" embedding
   (8 tokens of width 64, stored in the weights file), on ``2 * latent - 1``;
4. the transformer predicts a residual over the bicubic latent (in the same [-1, 1] units);
   add it, map back by pixel-shuffle and clamp to [0, 1].

Why space-to-depth instead of a trained VAE: it is exactly invertible (no reconstruction
error floor to confound quantization error), it leaves one single network to quantize (the
transformer is the whole story, as in LSGQuant), and it costs two reshapes on any hardware.

Model size (``tiny_vsr_config()``): width 256 = 4 heads x 64, 6 blocks, FFN 1024,
patch (2, 1, 1) (two frames x one latent cell: each token covers one 4x4-pixel cell, so no
token seam every 8 pixels), about 6.9 M parameters, shipped in fp16 (13.9 MB). An 8-frame
128x128 HQ clip is LQ 32x32 -> latent (48, 8, 32, 32) -> 4 x 32 x 32 = 4096 tokens.
Head dim 64 suits Wan's 3-axis RoPE: ``2 * (64 // 6) = 20`` channels each for height and
width, 24 for time (all even, as RoPE needs).

The fixed text embedding is a seeded N(0, 1) buffer (the "empty prompt"); the transformer's
text projection is what training adapts. Inputs whose frame count, LQ height or width is not
a whole number of patches are replicate-padded to whole patches and cropped back.

Weights are produced by ``examples/train_tiny_vsr.py`` (seeded; its docstring records the run)
and loaded with safetensors only; its training photos are listed in the weights' JSON
(``training.training_photos``: 15 lomiri-wallpapers photos and 11 scikit-image images, all
disjoint from the evaluation photos). Quality of the shipped weights on ``eval_set()`` (6 clips
of 8 x 128 x 128 from evaluation-only photos, PSNR on uint8 RGB): 25.17 dB vs bicubic 23.38 dB
(+1.79 dB), per clip +0.98 .. +2.64 dB; on 12 held-out plasma-workspace-wallpapers clips
(192 x 192, 8 frames) +2.64 dB. Float32 CPU time for 4096 tokens: ~1.4 s on 2 idle cores.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import user_error

if TYPE_CHECKING:  # diffusers is imported lazily: importing this module stays cheap.
    from diffusers import WanTransformer3DModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "tiny_vsr.safetensors"
FORMAT = "lsgq-tiny-vsr/1"
SCALE = 4

_DEFAULT_CONFIG: dict[str, Any] = {
    "format": FORMAT,
    "scale": SCALE,
    "timestep": 399,
    "text_tokens": 8,
    "residual": True,
    "transformer": {
        "patch_size": [2, 1, 1],
        "num_attention_heads": 4,
        "attention_head_dim": 64,
        "in_channels": 3 * SCALE * SCALE,
        "out_channels": 3 * SCALE * SCALE,
        "text_dim": 64,
        "freq_dim": 64,
        "ffn_dim": 1024,
        "num_layers": 6,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    },
}


def tiny_vsr_config() -> dict[str, Any]:
    """The default architecture (a fresh deep copy): what the shipped weights were trained with.

    Keys: ``format``, ``scale`` (4), ``timestep`` (int), ``text_tokens`` (L), ``residual`` (bool)
    and ``transformer`` (the ``WanTransformer3DModel`` constructor arguments).
    """
    return copy.deepcopy(_DEFAULT_CONFIG)


def _is_diffusers_model(fn: Any) -> bool:
    try:
        from diffusers.models.modeling_utils import ModelMixin
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        return False
    return isinstance(fn, ModelMixin)


class TinyVSR(torch.nn.Module):
    """One-step x4 VSR: bicubic + space-to-depth latent, one Wan transformer call, depth-to-space.

    Attributes:
        transformer: the ``WanTransformer3DModel`` (in/out channels 48 = 3 * 4 * 4).
        text_embeds: buffer ``(1, L, text_dim)``, the fixed text embedding (expanded to the batch).
        timestep: the fixed diffusion timestep (int).
        scale: 4.
        residual: the transformer's output is added to its input (the bicubic latent).
    """

    def __init__(self, transformer: "WanTransformer3DModel", text_embeds: torch.Tensor, timestep: int,
                 scale: int = SCALE, residual: bool = True) -> None:
        super().__init__()
        if text_embeds.dim() != 3 or text_embeds.shape[0] != 1:
            raise ValueError(f"text_embeds must be (1, L, text_dim), got {tuple(text_embeds.shape)}")
        self.transformer = transformer
        self.register_buffer("text_embeds", text_embeds)
        self.timestep = int(timestep)
        self.scale = int(scale)
        self.residual = bool(residual)
        self.patch = tuple(int(p) for p in transformer.config.patch_size)

    # ------------------------------------------------------------------ latent space
    def lq_to_latent(self, lq: torch.Tensor) -> torch.Tensor:
        """Bicubic x4 then pixel-unshuffle by 4.

        Args:
            lq: ``(B, 3, T, h, w)`` float in [0, 1].

        Returns:
            ``(B, 48, T, h, w)`` float32 (bicubic values are not clamped, so this stays exactly
            invertible by :meth:`latent_to_video` up to its final clamp).
        """
        if lq.dim() != 5 or lq.shape[1] != 3:
            raise ValueError(f"lq must be (B, 3, T, h, w), got {tuple(lq.shape)}")
        b, c, t, h, w = lq.shape
        s = self.scale
        frames = lq.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        up = F.interpolate(frames, scale_factor=s, mode="bicubic", align_corners=False)
        lat = F.pixel_unshuffle(up, s)  # (B*T, 3*s*s, h, w)
        return lat.reshape(b, t, c * s * s, h, w).permute(0, 2, 1, 3, 4).contiguous()

    def video_to_latent(self, video: torch.Tensor) -> torch.Tensor:
        """Pixel-unshuffle by 4 (no resampling): the exact inverse of :meth:`latent_to_video`.

        Args:
            video: ``(B, 3, T, 4h, 4w)``.

        Returns:
            ``(B, 48, T, h, w)`` float32. Training targets live here: L1 on latents is L1 on pixels.
        """
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
        b, c, t, hh, ww = video.shape
        s = self.scale
        if hh % s or ww % s:
            raise ValueError(f"video height and width must be multiples of {s}, got {hh}x{ww}")
        frames = video.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, hh, ww)
        lat = F.pixel_unshuffle(frames, s)
        return lat.reshape(b, t, c * s * s, hh // s, ww // s).permute(0, 2, 1, 3, 4).contiguous()

    def latent_to_video(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixel-shuffle by 4 and clamp.

        Args:
            latent: ``(B, 48, T, h, w)``.

        Returns:
            ``(B, 3, T, 4h, 4w)`` float32 in [0, 1].
        """
        if latent.dim() != 5 or latent.shape[1] != 3 * self.scale ** 2:
            raise ValueError(f"latent must be (B, {3 * self.scale ** 2}, T, h, w), got {tuple(latent.shape)}")
        b, c, t, h, w = latent.shape
        s = self.scale
        frames = latent.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        video = F.pixel_shuffle(frames, s)  # (B*T, 3, h*s, w*s)
        video = video.reshape(b, t, 3, h * s, w * s).permute(0, 2, 1, 3, 4)
        return video.clamp(0.0, 1.0).contiguous()

    # ------------------------------------------------------------------ transformer call
    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the transformer's inputs (that of ``text_embeds``)."""
        return self.text_embeds.dtype

    def _pad_amount(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        pt, ph, pw = self.patch
        return (-t) % pt, (-h) % ph, (-w) % pw

    def _inputs_from_latent(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, t, h, w = latent.shape
        pad_t, pad_h, pad_w = self._pad_amount(t, h, w)
        z = latent * 2.0 - 1.0
        if pad_t or pad_h or pad_w:  # replicate-pad to a whole number of patches; cropped again in forward
            z = F.pad(z, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")
        dev = latent.device
        return {
            "hidden_states": z.to(self.compute_dtype),
            "timestep": torch.full((b,), self.timestep, dtype=torch.long, device=dev),
            "encoder_hidden_states": self.text_embeds.expand(b, -1, -1).to(dev),
        }

    def transformer_inputs(self, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact keyword arguments :meth:`forward` passes the transformer.

        Args:
            lq: ``(B, 3, T, h, w)`` float in [0, 1].

        Returns:
            ``hidden_states`` ``(B, 48, T', h', w')`` = ``2 * lq_to_latent(lq) - 1`` (T', h', w':
            T, h, w replicate-padded to whole patches, e.g. T to even for the (2, 1, 1) patch), ``timestep`` ``(B,)`` int64 filled with ``self.timestep``,
            ``encoder_hidden_states`` ``(B, L, text_dim)``. Use it as example inputs to capture
            ``vsr.transformer``.
        """
        return self._inputs_from_latent(self.lq_to_latent(lq))

    def predict_latent(self, lq: torch.Tensor, transformer: Callable[..., Any] | None = None) -> torch.Tensor:
        """The model's HQ latent before depth-to-space and clamping (what training supervises).

        Args:
            lq: ``(B, 3, T, h, w)`` float in [0, 1].
            transformer: see :meth:`forward`.

        Returns:
            ``(B, 48, T, h, w)`` float32, ``(z + transformer(z) + 1) / 2`` with ``z = 2 * latent - 1``
            (residual) or ``(transformer(z) + 1) / 2`` (not residual).
        """
        latent = self.lq_to_latent(lq)
        inputs = self._inputs_from_latent(latent)
        fn = self.transformer if transformer is None else transformer
        out = fn(**inputs, return_dict=False) if _is_diffusers_model(fn) else fn(**inputs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif not isinstance(out, torch.Tensor) and hasattr(out, "sample"):
            out = out.sample
        t, h, w = latent.shape[-3:]
        out = out[..., :t, :h, :w].float()
        if self.residual:
            out = out + inputs["hidden_states"][..., :t, :h, :w].float()
        return (out + 1.0) * 0.5

    def forward(self, lq: torch.Tensor, transformer: Callable[..., Any] | None = None) -> torch.Tensor:
        """Upscale a clip x4.

        Args:
            lq: ``(B, 3, T, h, w)`` float in [0, 1].
            transformer: optional stand-in for ``self.transformer`` (e.g. a quantized module), called
                as ``transformer(**self.transformer_inputs(lq))`` and returning a tensor
                ``(B, 48, T, h', w')``, a tuple whose first element is that tensor, or an object with
                ``.sample``. A diffusers model is called with ``return_dict=False`` as well.

        Returns:
            ``(B, 3, T, 4h, 4w)`` float32 in [0, 1].
        """
        return self.latent_to_video(self.predict_latent(lq, transformer))


@torch.no_grad()
def upscale_clip(vsr: TinyVSR, lq_uint8: np.ndarray, transformer: Callable[..., Any] | None = None) -> np.ndarray:
    """Upscale one uint8 clip with ``vsr`` (whole clip in one transformer call).

    Args:
        vsr: the model.
        lq_uint8: ``(T, h, w, 3)`` uint8 RGB.
        transformer: optional stand-in for ``vsr.transformer`` (see :meth:`TinyVSR.forward`).

    Returns:
        ``(T, 4h, 4w, 3)`` uint8 RGB.
    """
    arr = np.asarray(lq_uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"lq_uint8 must be (T, h, w, 3) uint8, got {arr.shape} {arr.dtype}")
    dev = vsr.text_embeds.device
    lq = torch.from_numpy(np.ascontiguousarray(arr)).to(dev).permute(3, 0, 1, 2).unsqueeze(0).float() / 255.0
    hq = vsr(lq, transformer=transformer)[0]  # (3, T, 4h, 4w)
    return (hq.permute(1, 2, 3, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------- construction / loading
def _new_transformer(config: dict[str, Any]) -> "WanTransformer3DModel":
    from diffusers import WanTransformer3DModel

    kw = dict(config["transformer"])
    kw["patch_size"] = tuple(kw["patch_size"])
    return WanTransformer3DModel(**kw)


def build_tiny_vsr(config: dict[str, Any] | None = None, seed: int = 0) -> TinyVSR:
    """A randomly initialised ``TinyVSR`` (seeded), for training and tests.

    The transformer's ``proj_out`` is zero-initialised, so with ``residual`` the untrained model
    is exactly bicubic upsampling. ``text_embeds`` is ``N(0, 1)`` of shape ``(1, L, text_dim)``.
    """
    config = tiny_vsr_config() if config is None else config
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _new_transformer(config)
    if config.get("residual", True):
        torch.nn.init.zeros_(transformer.proj_out.weight)
        torch.nn.init.zeros_(transformer.proj_out.bias)
    text = torch.randn(1, int(config["text_tokens"]), int(config["transformer"]["text_dim"]), generator=gen)
    return TinyVSR(transformer, text, int(config["timestep"]), int(config.get("scale", SCALE)),
                   bool(config.get("residual", True))).eval()


def tiny_vsr_state_dict(vsr: TinyVSR, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Flat tensors to save with safetensors: ``transformer.*``, ``text_embeds`` and ``timestep``.

    Floating tensors are cast to ``dtype``; ``timestep`` is a 0-d int64 tensor.
    """
    out = {f"transformer.{k}": v.detach().to("cpu", dtype).contiguous()
           for k, v in vsr.transformer.state_dict().items()}
    out["text_embeds"] = vsr.text_embeds.detach().to("cpu", dtype).contiguous()
    out["timestep"] = torch.tensor(vsr.timestep, dtype=torch.int64)
    return out


def save_tiny_vsr(vsr: TinyVSR, path: str | Path, config: dict[str, Any],
                  dtype: torch.dtype = torch.float16, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (safetensors) and the JSON config beside it (same stem, ``.json``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    cfg["dtype"] = str(dtype).replace("torch.", "")
    if extra_meta:
        cfg["training"] = extra_meta
    save_file(tiny_vsr_state_dict(vsr, dtype), str(path), metadata={"config": json.dumps(cfg, sort_keys=True)})
    path.with_suffix(".json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return path


def _read_config(path: Path, meta: dict[str, str] | None) -> dict[str, Any]:
    side = path.with_suffix(".json")
    if side.is_file():
        return json.loads(side.read_text())
    if meta and "config" in meta:
        return json.loads(meta["config"])
    return tiny_vsr_config()


def load_tiny_vsr(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> TinyVSR:
    """Load the shipped (or a given) ``TinyVSR`` checkpoint with safetensors (never pickle).

    Args:
        path: a ``.safetensors`` file; default ``lsgq_compiler/vsr/models/weights/tiny_vsr.safetensors``.
            Its config is read from the ``.json`` beside it, else from the file's metadata.
        dtype: the dtype of the returned model's parameters and ``text_embeds``.

    Raises:
        FileNotFoundError: the weights file is missing (``examples/train_tiny_vsr.py`` makes it).
        ValueError: the file's tensors do not match the config (missing, extra or mis-shaped keys).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = DEFAULT_WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise user_error(f"TinyVSR weights not found: {path}",
                         "run `python examples/train_tiny_vsr.py` to train them (see its docstring), or pass "
                         "the path of a .safetensors file it wrote", FileNotFoundError)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = _read_config(path, meta)
    tensors = load_file(str(path))
    vsr = build_tiny_vsr(config, seed=0)
    expected = {f"transformer.{k}": v for k, v in vsr.transformer.state_dict().items()}
    expected["text_embeds"] = vsr.text_embeds
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected) - {"timestep"})
    bad = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    if missing or extra or bad:
        lines = ([f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"] if missing else []) + \
                ([f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"] if extra else []) + bad[:5]
        raise user_error(f"{path} does not match its TinyVSR config: " + "; ".join(lines),
                         "the weights and the .json beside them must come from the same "
                         "examples/train_tiny_vsr.py run; retrain or restore both")
    sd = {k[len("transformer."):]: v.float() for k, v in tensors.items() if k.startswith("transformer.")}
    vsr.transformer.load_state_dict(sd, strict=True)
    vsr.text_embeds = tensors["text_embeds"].float().clone()
    if "timestep" in tensors:
        vsr.timestep = int(tensors["timestep"].item())
    vsr = vsr.to(dtype).eval()
    if dtype in (torch.float16, torch.bfloat16):  # as diffusers does: RoPE tables stay float32
        vsr.transformer.rope.to(torch.float32)
    return vsr
