"""The embedded demo models: small, trained models of ComfyUI's real ``Flux``, ``SDXL``, ``QwenImage``, ``ZImage`` and
``WAN21_T2V`` (text-to-video) classes plus a PCA patch "VAE" and a fixed class-embedding "text encoder" each, so whole
graphs run on a CPU anywhere and caching fidelity can be measured on models whose denoising trajectories are trained
(see ``scripts/train_demo.py``).

Modules: :mod:`.data` (the training images), :mod:`.codec` (image <-> latent), :mod:`.model` (the FLUX model +
conditioning), :mod:`.sdxl` (the SDXL model + conditioning), :mod:`.qwen` and :mod:`.zimage` (the Qwen-Image and
Z-Image models + conditioning, issue 19), :mod:`.wan` (the Wan 2.1 text-to-video model + conditioning + the panning
clips it is trained on), :mod:`.weights_file` (the weights-file layout they share), :mod:`.scenes`
(procedural scenes with compositional prompts) and :mod:`.proxy` (the larger FLUX-class proxy model trained on them, on
which step-caching defaults are chosen).
"""
