"""The embedded demo models: small, trained models of ComfyUI's real ``Flux`` and ``SDXL`` classes plus a PCA patch
"VAE" and a fixed class-embedding "text encoder" each, so whole graphs run on a CPU anywhere and caching fidelity can
be measured on models whose denoising trajectories are trained (see ``scripts/train_demo.py``).

Modules: :mod:`.data` (the training images), :mod:`.codec` (image <-> latent), :mod:`.model` (the FLUX model +
conditioning), :mod:`.sdxl` (the SDXL model + conditioning), :mod:`.weights_file` (the weights-file layout both share),
:mod:`.scenes` (procedural scenes with compositional prompts) and :mod:`.proxy` (the larger FLUX-class proxy model
trained on them, on which step-caching defaults are chosen).
"""
