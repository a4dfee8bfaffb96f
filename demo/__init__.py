"""The embedded demo model: a small, trained model of ComfyUI's real ``Flux`` class plus a PCA patch "VAE" and a
fixed class-embedding "text encoder", so whole graphs run on a CPU anywhere and caching fidelity can be measured on a
model whose denoising trajectory is trained (see ``scripts/train_demo.py``).

Modules: :mod:`.data` (the training images), :mod:`.codec` (image <-> latent), :mod:`.model` (model + conditioning).
"""
