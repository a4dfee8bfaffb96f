import nodes


def test_pack_is_loaded_into_real_comfyui():
    import comfy.model_management as mm
    assert mm.get_torch_device().type == "cpu"
    assert "EasyCache" in nodes.NODE_CLASS_MAPPINGS
