"""The pruned structure every OpenVINO/openvino-genai test exports, and the tiny model pruned to it."""

from testing_utils import GEMMA3_MIXED_KINDS, make_pruned_model

from optimum_multipruner.structure import PrunedStructure

# Layer 0 without attention, layer 1 without MLP, mixed KV heads and MLP widths.
STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[64, 0, 256, 128]
)
MIXED_KINDS = PrunedStructure(*GEMMA3_MIXED_KINDS)  # Gemma 3 without a full and a sliding-window attention
F32 = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}  # the CPU default KV cache is f16
PAD = 3


def pruned_model(family: str, structure: PrunedStructure = STRUCTURE, seed: int = 7):
    return make_pruned_model(family, structure, seed=seed)
