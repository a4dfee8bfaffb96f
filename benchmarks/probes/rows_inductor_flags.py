# Extra benchmark rows (run.py --extra-rows benchmarks/probes/rows_inductor_flags.py): the inductor flags that the
# "productionizing diffusion" recipes set, one at a time, on the FLUX fp8 + regional-compile stack. Each row sets
# its flag only while its own sampling runs (OUTER_SAMPLE wrapper), so the compile of that row sees it and later
# rows do not. Exec'd by run.py with `row`, `node`, `CTX`, `RowSkipped` in scope.
FLAGS = {
    "coordinate_descent": {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True},
    "no_epilogue_fusion": {"epilogue_fusion": False},
    "conv_1x1_as_mm": {"conv_1x1_as_mm": True},
    "aggressive_fusion": {"aggressive_fusion": True},
}


def _inductor_config(values):
    """Inductor's own patch context: accepts dotted keys such as "triton.enable_persistent_tma_matmul"."""
    import torch._inductor.config as config

    return config.patch(values)


def _with_flags(model, values):
    from comfy.patcher_extension import WrappersMP

    def outer_sample(executor, *args, **kwargs):
        with _inductor_config(values):
            return executor(*args, **kwargs)

    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "bench_inductor_flags", outer_sample)
    return model


for _name, _values in FLAGS.items():
    row(f"fp8sm+compile_regional+{_name}", families=("flux", "sdxl"), heavy=True,
        note=f"fp8_scaled_mm then Fastlane Compile regional with inductor {_values}")(
        lambda m, _v=_values: _with_flags(node("FastlaneCompile", node("FastlaneQuantize", m, scheme="fp8_scaled_mm")), _v))

row("fp8sm+compile_regional_autotune", families=("flux", "sdxl"), heavy=True,
    note="fp8_scaled_mm then Fastlane Compile regional, mode max-autotune-no-cudagraphs")(
    lambda m: node("FastlaneCompile", node("FastlaneQuantize", m, scheme="fp8_scaled_mm"),
                   mode="max-autotune-no-cudagraphs"))

# SDXL: the flags on the stack that pays there (whole UNet, CUDA graphs). conv_1x1_as_mm is the UNet-only one.
for _name in ("conv_1x1_as_mm", "coordinate_descent"):
    row(f"compile_whole_ro+{_name}", families=("sdxl",), heavy=True,
        note=f"Fastlane Compile whole, reduce-overhead, with inductor {FLAGS[_name]}")(
        lambda m, _v=FLAGS[_name]: _with_flags(node("FastlaneCompile", m, scope="whole", mode="reduce-overhead"), _v))

# max-autotune with Hopper's persistent TMA matmul templates among the candidates (off by default in torch 2.11),
# on the lossless bf16 stack and on the fp8 one.
TMA = {"triton.enable_persistent_tma_matmul": True}
row("compile_regional_autotune+tma", families=("flux",), heavy=True,
    note=f"Fastlane Compile regional, mode max-autotune-no-cudagraphs, inductor {TMA}")(
    lambda m: _with_flags(node("FastlaneCompile", m, mode="max-autotune-no-cudagraphs"), TMA))
row("fp8sm+compile_regional_autotune+tma", families=("flux",), heavy=True,
    note=f"fp8_scaled_mm then Fastlane Compile regional, mode max-autotune-no-cudagraphs, inductor {TMA}")(
    lambda m: _with_flags(node("FastlaneCompile", node("FastlaneQuantize", m, scheme="fp8_scaled_mm"),
                                mode="max-autotune-no-cudagraphs"), TMA))
