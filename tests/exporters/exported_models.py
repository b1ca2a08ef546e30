"""The pruned structure every OpenVINO/openvino-genai test exports, and the tiny model pruned to it."""

from testing_utils import make_pruned_model

from optimum_multipruner.structure import PrunedStructure

# Layer 0 without attention, layer 1 without MLP, mixed KV heads and MLP widths.
STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[64, 0, 256, 128]
)
F32 = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}  # the CPU default KV cache is f16
PAD = 3


def pruned_model(family: str, seed: int = 7):
    return make_pruned_model(family, STRUCTURE, seed=seed)
