"""The torch.compile node: MODEL in, a clone whose diffusion model runs compiled out. Mechanism: compilers/engine.py."""
from __future__ import annotations

from dataclasses import replace

from comfy_api.latest import io

from ..compilers import allocator, attention, cuda_graphs, engine

CATEGORY = "fastlane/speed"


class FastlaneCompile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneCompile",
            display_name="Fastlane Compile",
            category=CATEGORY,
            description="torch.compile the diffusion model. 'regional' compiles each repeated block once and reuses "
                        "it for all blocks of its kind (FLUX: 2 graphs for 57 blocks; Qwen-Image and Wan: 1; "
                        "Z-Image: 2): a far shorter cold start than 'whole', about the same speed. Regional knows "
                        "FLUX.1/FLUX.2, SDXL/SD1.x, Qwen-Image, Wan 2.1/2.2, Z-Image/Lumina2, HunyuanVideo and "
                        "Chroma; 'whole' takes any model. Works before or after Fastlane caches, LoRA and "
                        "quantization; the first run compiles (logged, with its seconds), later runs reuse it. "
                        "A new prompt never recompiles; a new resolution or batch compiles once.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to compile (regional: FLUX, SDXL/SD1.x, Qwen-Image, "
                                                "Wan, Z-Image/Lumina2, HunyuanVideo, Chroma; 'whole': any model)."),
                io.Combo.Input("scope", options=list(engine.SCOPES), default="regional",
                               tooltip="regional: compile each transformer block kind once and reuse it (fast cold "
                                       "start; block caches and lowvram work block by block; a model family "
                                       "without known blocks is refused here: use whole). whole: one graph for "
                                       "the whole model (slower cold start; falls back to regional while block "
                                       "patches or partial loading are present)."),
                io.Combo.Input("backend", options=list(engine.BACKENDS), default="inductor",
                               tooltip="inductor generates fused kernels (the speed-up). aot_eager / eager only "
                                       "trace (debugging: does the model compile without graph breaks?)."),
                io.Combo.Input("mode", options=list(engine.MODES), default="default",
                               tooltip="inductor mode. default: fast compile. max-autotune(-no-cudagraphs): "
                                       "benchmarks matmul/conv kernels while compiling (minutes; on FLUX on an "
                                       "H100/H200 no faster than default, and over 8 min with fp8). "
                                       "reduce-overhead / max-autotune add CUDA graphs (GPU only; graphs with inputs "
                                       "mutated in place are skipped by torch; they need ComfyUI started with "
                                       "--disable-cuda-malloc, else they compile without graphs, logged)."),
                io.Combo.Input("dynamic", options=list(engine.DYNAMIC), default="auto",
                               tooltip="auto: text length dynamic from the start (a new prompt never recompiles), "
                                       "image size and batch static (fastest kernels; each new resolution or batch "
                                       "compiles once). true: sizes dynamic from the first compile (fewer "
                                       "recompiles, slower kernels; the first non-square size still recompiles "
                                       "once; SDXL's whole model with CUDA graphs had not compiled after 7 min on "
                                       "an H200). "
                                       "false: everything static (a new text length recompiles too)."),
                io.Boolean.Input("fullgraph", default=False,
                                 tooltip="Fail on a graph break instead of splitting the graph (a check: the "
                                         "regional blocks of every family above compile without breaks)."),
                io.String.Input("cache_dir", default="", optional=True,
                                tooltip="Folder for inductor's on-disk caches (FX graphs, kernels, autotuning), so "
                                        "a restarted ComfyUI skips most of the compile. Empty: torch's default "
                                        "($TORCHINDUCTOR_CACHE_DIR or /tmp/torchinductor_<user>, lost on reboot). "
                                        "Process-wide."),
            ],
            outputs=[io.Model.Output(tooltip="The model, compiled at its first sampling run (the input MODEL is "
                                             "unchanged and stays eager).")],
        )

    @classmethod
    def execute(cls, model, scope: str, backend: str, mode: str, dynamic: str, fullgraph: bool,
                cache_dir: str = "") -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
            raise ValueError(f"Fastlane Compile needs a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
        spec = engine.CompileSpec(scope=scope, backend=backend, mode=mode, dynamic=dynamic, fullgraph=fullgraph)
        spec.validate()
        device = getattr(model, "load_device", None)
        if mode in allocator.GRAPH_MODES and getattr(device, "type", "cuda") != "cuda":
            raise ValueError(f"mode '{mode}' uses CUDA graphs, and this model runs on {device}: use mode 'default' "
                             "or 'max-autotune-no-cudagraphs'")
        blocked = allocator.graphs_blocked(f"Compile's mode '{mode}'") if mode in allocator.GRAPH_MODES else None
        if blocked:
            spec = replace(spec, mode=allocator.GRAPH_MODES[mode])
            allocator.warn_once(f"{blocked}; compiling with mode '{spec.mode}' (the same kernels, no CUDA graphs)")
        if cache_dir and cache_dir.strip():
            engine.set_cache_dir(cache_dir.strip())
        patched, _ = engine.attach(model, spec)
        return io.NodeOutput(patched)


class FastlaneAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneAttention",
            display_name="Fastlane Attention Kernel",
            category=CATEGORY,
            description="Choose the kernel that runs the diffusion model's attention. On Hopper (H100/H200) cuDNN "
                        "attention is faster than PyTorch's default flash kernel at FLUX and SDXL shapes; 'auto' picks "
                        "it there and keeps the default elsewhere: lossless (same math, other kernel). 'sage' runs "
                        "SageAttention (pip install sageattention) for this MODEL only: INT8 Q.K, faster on some GPUs, "
                        "not lossless. Works with or without Fastlane Compile, in either order. The input MODEL is "
                        "unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL whose attention kernel to choose."),
                io.Combo.Input("backend", options=list(attention.CHOICES), default="auto",
                               tooltip="auto: cuDNN on sm90+ (Hopper, Blackwell), flash elsewhere. cudnn / flash / "
                                       "efficient / math: that PyTorch SDPA kernel first; a kernel that cannot take "
                                       "an input (head size, dtype, mask) falls through to the next. sage: "
                                       "SageAttention (needs the sageattention package and an NVIDIA GPU; changes "
                                       "the image slightly, see docs/BENCHMARKS.md)."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the chosen attention kernel (input MODEL unchanged).")],
        )

    @classmethod
    def execute(cls, model, backend: str) -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "load_device"):
            raise ValueError(f"Fastlane Attention Kernel needs a MODEL (a ComfyUI ModelPatcher), got "
                             f"{type(model).__name__}")
        patched, chosen = attention.attach(model, backend)
        text = "attention: SageAttention" if chosen == "sage" else f"attention: SDPA, {chosen} first"
        return io.NodeOutput(patched, ui={"text": [text]})


class FastlaneCudaGraph(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastlaneCudaGraph",
            display_name="Fastlane CUDA Graph",
            category=CATEGORY,
            description="Record each diffusion-model call in a CUDA graph (one per image size and batch, ~0.2 s "
                        "each) and replay it with one launch instead of thousands: for models whose steps are "
                        "bound by the CPU launching kernels (SDXL; on FLUX, whose steps keep the GPU busy, it "
                        "measured 0-3%). Alone it is lossless (the same kernels, bit-identical output); after or "
                        "before Fastlane Compile 'regional' it replays the compiled blocks, close to a whole-model "
                        "compile's speed without its minutes of compiling at each new size. Fastlane caches "
                        "decide outside the graph; calls with ComfyUI patches, ControlNet or lowvram loading run "
                        "without a graph (logged). NVIDIA GPUs only, with ComfyUI started with "
                        "--disable-cuda-malloc (under its default cudaMallocAsync allocator recordings fail: the node "
                        "then passes the MODEL through and says so). The input MODEL is unchanged.",
            inputs=[io.Model.Input("model", tooltip="The MODEL whose calls to record (FLUX or an SDXL/SD1.x UNet; "
                                                    "on an NVIDIA GPU).")],
            outputs=[io.Model.Output(tooltip="The model, recorded at the second call of each new size or batch "
                                             "(the input MODEL is unchanged).")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
            raise ValueError(f"Fastlane CUDA Graph needs a MODEL (a ComfyUI ModelPatcher), got {type(model).__name__}")
        device = getattr(model, "load_device", None)
        if getattr(device, "type", None) != "cuda":
            raise ValueError(f"Fastlane CUDA Graph records NVIDIA CUDA graphs, and this model runs on {device}: "
                             "bypass this node (Ctrl+B) on this machine")
        blocked = allocator.graphs_blocked("Fastlane CUDA Graph")
        if blocked:
            allocator.warn_once(f"{blocked}; the MODEL passes through without CUDA graphs")
            return io.NodeOutput(model)
        patched, _ = cuda_graphs.attach(model)
        return io.NodeOutput(patched)


NODES = [FastlaneCompile, FastlaneAttention, FastlaneCudaGraph]
