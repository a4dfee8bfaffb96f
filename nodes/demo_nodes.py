"""Nodes for the embedded demo models: tiny trained FLUX-class and SDXL-class models, their class "prompts" and
their patch codec "VAE".

With them a whole graph (loader -> prompt -> empty latent -> KSampler -> decode) runs on any CPU in seconds, which is
what Fastlane's tests, examples and fidelity measurements use when no real checkpoint is around. FLUX: 16-channel
latents (EmptySD3LatentImage), cfg 1 with embedded guidance. SDXL: 4-channel latents (EmptyLatentImage), cfg ~5 with
the 'none' subject as the negative, euler/normal. FLUX proxy ('flux-proxy'): the larger FLUX-class model trained on
procedural scenes with compositional prompts (demo/proxy.py); it takes free text over its vocabulary and draws a
recognisable scene, so it is the one the demo workflow shows a newcomer. Qwen-Image ('qwen-image') and Z-Image
('z-image'): small models of those ComfyUI classes trained on the same photos as 'flux' (demo/qwen.py, demo/zimage.py).
Wan 2.1 ('wan'): a small text-to-video model of ComfyUI's WAN21_T2V class trained on panning clips of those photos
(demo/wan.py): EmptyHunyuanLatentVideo at length 9 (3 latent frames); its decode gives the clip's frames as an IMAGE
batch, as ComfyUI passes video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from comfy_api.latest import io

from ..demo import codec, model, proxy, qwen, scenes, sdxl, wan, zimage

CATEGORY = "fastlane/demo"


@dataclass(frozen=True)
class DemoFamily:
    """One demo model family: how to load it, prompt it, and move between pixels and its latents."""

    load: Callable[[], object]
    class_names: Callable[[], list[str]]
    conditioning: Callable[[str], list]
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]


def proxy_conditioning(prompt: str) -> list:
    """The proxy's conditioning for free text; a word outside its vocabulary is a ValueError that lists the
    vocabulary (the proxy's "text encoder" is a fixed word table, it cannot guess an unknown word)."""
    try:
        return proxy.conditioning(prompt)
    except KeyError as error:
        words = ", ".join(w for w in scenes.VOCAB if w != scenes.PAD)
        raise ValueError(f"the flux-proxy demo model does not know {error.args[0].split(': ', 1)[-1]}; "
                         f"its prompts use only these words: {words}") from None


def _demo(module, conditioning: Callable[[str], list] | None = None,
          encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DemoFamily:
    """A demo module's family: its loader, classes and conditioning, and the codec of its weights file (``encode``
    where the model's latents are not the codec's images: Qwen-Image's time axis, Wan's clips)."""
    return DemoFamily(load=module.load_demo_patcher,
                      class_names=lambda: module.class_names(include_unconditional=True),
                      conditioning=conditioning or module.conditioning,
                      encode=encode or (lambda images: codec.encode(images, module.WEIGHTS)),
                      decode=lambda latent: codec.decode(latent, module.WEIGHTS))  # a video latent gives its frames


#: family name -> its demo model. Add an entry and every node below offers it.
FAMILIES: dict[str, DemoFamily] = {
    "flux": _demo(model),
    "sdxl": _demo(sdxl),
    # Qwen-Image's latents carry a time axis, (B, 16, 1, H/8, W/8), as its real VAE's do
    "qwen-image": _demo(qwen, encode=lambda images: codec.encode(images, qwen.WEIGHTS).unsqueeze(2)),
    "z-image": _demo(zimage),
    # video: an IMAGE batch of frames is one clip, (1, 16, frames, H/8, W/8); decode gives every clip's frames
    "wan": _demo(wan, encode=wan.encode),
    "flux-proxy": _demo(proxy, proxy_conditioning),
}


def _family_input() -> io.Combo.Input:
    return io.Combo.Input("family", options=list(FAMILIES), default="flux",
                          tooltip="Which demo model (128x128 images): 'flux' is a small FLUX.1-dev-class transformer "
                                  "(16-channel latents: EmptySD3LatentImage, cfg 1); 'sdxl' is a small SDXL-class "
                                  "UNet (4-channel latents: EmptyLatentImage, cfg ~5 with 'none' as the negative, "
                                  "euler/normal); 'flux-proxy' is a larger FLUX-class model trained on procedural "
                                  "scenes (free-text prompts over its vocabulary, cfg 1: it draws the scene you "
                                  "describe); 'qwen-image' and 'z-image' are small models of ComfyUI's Qwen-Image "
                                  "and Z-Image classes (EmptySD3LatentImage; Qwen-Image cfg 2.5 with 'none' as the "
                                  "negative, Z-Image cfg 1); 'wan' is a small text-to-video model of ComfyUI's Wan "
                                  "2.1 class trained on panning clips (EmptyHunyuanLatentVideo, length 9: 3 latent "
                                  "frames; cfg 4 with 'none' as the negative; decodes to the clip's frames). Use the "
                                  "same family on every demo node of a graph.")


def _subjects() -> list[str]:
    names: list[str] = []
    for family in FAMILIES.values():
        names += [n for n in family.class_names() if n not in names]
    return names


class FastlaneDemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneDemoModelLoader",
            display_name="Fastlane Demo Model Loader",
            category=CATEGORY,
            description="Loads one of Fastlane's embedded demo models, so whole graphs run on a CPU without "
                        "downloading weights: a small FLUX-class model (ComfyUI's own Flux classes) or a small "
                        "SDXL-class UNet (ComfyUI's own SDXL classes), each trained on 8 photos (blocky patchworks), "
                        "or the FLUX proxy ('flux-proxy', 7.7M parameters, ComfyUI's Flux) trained on procedural "
                        "scenes with compositional prompts, which draws recognisable scenes.",
            inputs=[_family_input()],
            outputs=[io.Model.Output(tooltip="The demo diffusion model, ready for KSampler or the Fastlane nodes.")],
        )

    @classmethod
    def execute(cls, family: str) -> io.NodeOutput:
        return io.NodeOutput(FAMILIES[family].load())


class FastlaneDemoPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        subjects = _subjects()
        return io.Schema(
            node_id="FastlaneDemoPrompt",
            display_name="Fastlane Demo Prompt",
            category=CATEGORY,
            description="The demo model's 'text encoder'. flux/sdxl: conditioning for one of the images it was "
                        "trained on. flux-proxy: any prompt over its vocabulary (shapes, colours, sizes, places, "
                        "skies, grounds), e.g. one of its evaluation prompts from 'subject' or free text in 'text'. "
                        "'none' is the unconditional prediction (a negative for cfg > 1).",
            inputs=[
                _family_input(),
                io.Combo.Input("subject", options=subjects, default=subjects[0],
                               tooltip="What to draw. flux/sdxl: each subject is one training image; flux-proxy: "
                                       "its evaluation prompts (each has a reference render to compare with)."),
                io.String.Input("text", default="", multiline=True, optional=True,
                                tooltip="Free-text prompt; when not empty it replaces 'subject'. flux-proxy: any "
                                        "words of its vocabulary, e.g. 'a large red circle in the centre, night "
                                        "sky, snowy ground' (an unknown word is an error listing the vocabulary); "
                                        "flux/sdxl: a subject name."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning for the demo model (flux, flux-proxy: guidance 3.5 "
                                                    "embedded, FluxGuidance can change it; sdxl: context, pooled output and "
                                                    "the 128x128 size entries, as CLIPTextEncodeSDXL gives).")],
        )

    @classmethod
    def execute(cls, family: str, subject: str, text: str = "") -> io.NodeOutput:
        return io.NodeOutput(FAMILIES[family].conditioning(text.strip() or subject))


class FastlaneDemoDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneDemoDecode",
            display_name="Fastlane Demo Decode",
            category=CATEGORY,
            description="Decodes demo-model latents to an image with the family's patch codec (its stand-in VAE; "
                        "each demo model has its own).",
            inputs=[
                _family_input(),
                io.Latent.Input("samples", tooltip="Latents sampled with the demo model."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image (8 pixels per latent cell).")],
        )

    @classmethod
    def execute(cls, family: str, samples: dict) -> io.NodeOutput:
        return io.NodeOutput(FAMILIES[family].decode(samples["samples"]))


class FastlaneDemoEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneDemoEncode",
            display_name="Fastlane Demo Encode",
            category=CATEGORY,
            description="Encodes an image to demo-model latents with the demo's patch codec, e.g. for img2img "
                        "(KSampler with denoise < 1).",
            inputs=[
                _family_input(),
                io.Image.Input("pixels", tooltip="The image to encode; cropped to a multiple of 8 pixels."),
            ],
            outputs=[io.Latent.Output(tooltip="Latents in the demo model's latent space.")],
        )

    @classmethod
    def execute(cls, family: str, pixels: torch.Tensor) -> io.NodeOutput:
        return io.NodeOutput({"samples": FAMILIES[family].encode(pixels)})


NODES: list[type[io.ComfyNode]] = [FastlaneDemoModelLoader, FastlaneDemoPrompt, FastlaneDemoDecode, FastlaneDemoEncode]
