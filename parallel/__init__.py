"""Fastlane Multi-GPU: one image's diffusion-model calls run sequence-parallel across N processes.

ComfyUI's process is rank 0; ``launcher`` starts N-1 worker processes joined by a torch.distributed process group
(NCCL on CUDA, gloo on CPU). ``session`` runs on rank 0 in place of the model's ``forward_orig``; ``flux`` and
``wan`` cut every call's tokens into per-rank shares (FLUX also runs Fastlane's block caches sharded); ``attention``
joins the shares in attention (Ulysses all-to-all or K/V all-gather) through ComfyUI's
``optimized_attention_override`` hook; ``transfer`` moves weights and inputs; ``worker`` is a
worker's loop. This package imports only torch and ComfyUI (workers load it on its own, outside the pack).
"""
