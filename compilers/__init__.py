"""Plain-torch helpers behind the compile and QKV-fusion nodes (no ComfyUI node code here)."""
