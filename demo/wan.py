"""The demo Wan 2.1 model: a small text-to-video config of ComfyUI's real ``WAN21_T2V`` class, its trained
weights, its conditioning, and the panning clips it was trained on.

Built the way ComfyUI builds Wan 2.1 T2V (``comfy.supported_models.WAN21_T2V(...).get_model``, so
``comfy.model_base.WAN21`` around ``comfy.ldm.wan.model.WanModel``, discrete-flow sampling
(``ModelSamplingDiscreteFlow``, ``CONST``) with Wan's shift 8, the ``Wan21`` latent format on 5-D video latents
``(B, 16, T, H/8, W/8)``) and wrapped in a real ``ModelPatcher``. It keeps Wan's layout (3-D patch embedding (1, 2, 2), a stack of blocks with self-attention
under 3-axis RoPE over (frame, row, column), cross-attention to the text tokens, GELU FFN, one shared time projection
plus a learned ``modulation`` per block, a modulated head); only the sizes are small: dim 128 (2 heads of 64), 3
blocks, FFN 320, 32-dim context, 0.83M parameters (Wan 2.1 14B: dim 5120, 40 blocks). The "text encoder" is a
fixed table of per-class context tokens stored in the weights file (``WAN21.extra_conds`` reads only the context
for T2V).

A video, though a tiny one: each training sample is a clip of ``FRAMES`` latent frames made from one photo by a slow
pan (square crops shifted ``PAN_PX`` pixels right per latent frame, i.e. the camera pans right and the picture moves
left; a real Wan latent frame stands for 4 video frames), each frame encoded by the PCA patch codec (no temporal
compression: one latent frame decodes to one picture). So the time axis and the temporal RoPE carry something:
sampling draws a clip of the class panning. Sample it like Wan 2.1: ``EmptyHunyuanLatentVideo`` at length
``LENGTH`` (-> ``FRAMES`` latent frames), euler/simple, cfg ``DEFAULT_CFG`` against the ``none`` class.

Trained on this workplace's CPU (2 cores, 1 thread) by
    scripts/train_demo.py --family wan --steps 3000 --batch 16 --threads 1
(2026-12-07: 703 s of training at 234 ms/step, 8 classes x 97 clips, final avg loss 0.392; preview, 20 steps at cfg 4
against 'none', whole 3-frame clips against each class's reference clip: 16/16 samples nearest their own class, 14.4
dB mean PSNR to it; all in the file's ``fastlane.training`` metadata). 1.7 MB, fp16. The clips are recognisable by
colour and coarse layout (cup rim, rocket gantry lights, retina disc, red motorcycle band) but blocky and noisy: a
0.83M-parameter model with 12 minutes of training. cfg 2 / 3 / 4 / 5 all put 16/16 nearest their own class, at
15.9 / 15.1 / 14.4 / 13.8 dB; cfg 4 is the default because it draws the sharper structure (the PSNR to one fixed
reference clip rewards the blurrier, more average samples of low cfg), and it is near Wan 2.1's own cfg 5-6.
"""
from __future__ import annotations

from pathlib import Path

import torch

import comfy.supported_models

from . import codec, data, weights_file
from .weights_file import UNCONDITIONAL  # noqa: F401  (the negative prompt's class)

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fastlane-demo-wan.safetensors"

CONTEXT_DIM = 32  # Wan 2.1: 4096 (umT5-XXL hidden states)
CONTEXT_TOKENS = 8
DEFAULT_CFG = 4.0
FRAMES = 3  # latent frames per clip
LENGTH = 4 * (FRAMES - 1) + 1  # EmptyHunyuanLatentVideo's length for FRAMES latent frames (9)
PAN_PX = 8  # pan per latent frame, in pixels at the 128-pixel training size (one latent cell)
CLIP_SCALE = (0.72, 0.86)  # crop side of the training clips, as a part of the square (random in this range)
REFERENCE_SCALE = 0.8  # the reference clip's crop side

#: Wan 2.1 T2V's transformer (comfy/model_detection.py; 14B: dim 5120, 40 heads, 40 layers, FFN 13824, 4096-dim
#: text), scaled down.
UNET_CONFIG: dict = {
    "image_model": "wan2.1",
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "in_dim": 16,
    "out_dim": 16,
    "dim": 128,
    "ffn_dim": 320,
    "freq_dim": 256,
    "text_dim": CONTEXT_DIM,
    "num_heads": 2,  # heads of 64: RoPE axes 24 (frame) : 20 (row) : 20 (column), Wan's d - 4*(d//6) split
    "num_layers": 3,
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}


_DEMO = weights_file.DemoModel(comfy.supported_models.WAN21_T2V, UNET_CONFIG, WEIGHTS)
model_config, build_model = _DEMO.model_config, _DEMO.build_model
load_demo_patcher, class_names = _DEMO.load_demo_patcher, _DEMO.class_names


def conditioning(class_name: str, batch: int = 1, path: str | Path | None = None) -> list:
    """ComfyUI CONDITIONING for one class, shaped like the Wan text encoder's: ``[[context (batch, T, 32), {}]]``
    (``WAN21.extra_conds`` reads only the context for text-to-video; the pooled table of the file is unused)."""
    context, _ = weights_file.class_embedding(path or WEIGHTS, class_name, batch)
    return [[context, {}]]


# -- clips: frames <-> video latents, and the panning clips the model is trained on


def encode(frames: torch.Tensor, path: str | Path | None = None, clip_frames: int | None = None) -> torch.Tensor:
    """IMAGE frames (B*T, H, W, 3), clip by clip, -> video latent (B, 16, T, H/8, W/8). ``clip_frames`` (T) defaults
    to all frames in one clip, as a video's frames come to a VAE encode node."""
    latent = codec.encode(frames, path or WEIGHTS)  # (B*T, C, h, w): one latent frame per picture
    t = clip_frames or latent.shape[0]
    return latent.unflatten(0, (-1, t)).movedim(1, 2).contiguous()


def decode(latent: torch.Tensor, path: str | Path | None = None) -> torch.Tensor:
    """Video latent (B, 16, T, h, w) -> IMAGE frames (B*T, 8h, 8w, 3), clip after clip: how ComfyUI passes video."""
    return codec.decode(latent, path or WEIGHTS)


def pan_clip(name: str, scale: float, top: float, left: float, frames: int = FRAMES, size: int = data.IMAGE_SIZE,
             source: torch.Tensor | None = None) -> torch.Tensor:
    """One panning clip of class ``name``: ``frames`` square crops of side ``scale`` x the photo's square, the first
    at (``top``, ``left``) (parts of the room left for the whole pan), each next one ``PAN_PX`` output pixels to the
    right, resized to ``size``: (frames, size, size, 3)."""
    source = data.source_image(name) if source is None else source
    side = source.shape[0]
    crop = max(8, round(side * scale))
    step = PAN_PX * crop / size  # source pixels per frame
    room_x = side - crop - step * (frames - 1)
    if room_x < 0:
        raise ValueError(f"a {frames}-frame pan at scale {scale} does not fit the photo")
    y = round(top * (side - crop))
    clip = []
    for f in range(frames):
        x = round(left * room_x + f * step)
        clip.append(data._resize(source[y:y + crop, x:x + crop], size))
    return torch.stack(clip)


def reference_clip(name: str, frames: int = FRAMES, size: int = data.IMAGE_SIZE) -> torch.Tensor:
    """The class's reference clip (the pan through the middle at ``REFERENCE_SCALE``): what "recognisable" and the
    preview PSNR compare with. (frames, size, size, 3)."""
    return pan_clip(name, REFERENCE_SCALE, 0.5, 0.5, frames, size)


def training_clips(name: str, count: int, generator: torch.Generator, frames: int = FRAMES,
                   size: int = data.IMAGE_SIZE) -> torch.Tensor:
    """The reference clip and ``count`` random ones (crop side in ``CLIP_SCALE``, random start; always panning right):
    (count + 1, frames, size, size, 3)."""
    source = data.source_image(name)
    clips = [reference_clip(name, frames, size)]
    low, high = CLIP_SCALE
    for _ in range(count):
        scale = low + (high - low) * torch.rand((), generator=generator).item()
        top, left = torch.rand(2, generator=generator).tolist()
        clips.append(pan_clip(name, scale, top, left, frames, size, source))
    return torch.stack(clips)
