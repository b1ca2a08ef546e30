"""openvino-genai's `LLMPipeline`, the way most OpenVINO deployments (OpenVINO Model Server included) run an LLM, on
the IR of every family's pruned model: layer 0 without attention, uneven KV heads, a removed MLP.

The stateful pipeline and the continuous-batching one (a `SchedulerConfig`: paged attention, OVMS's path) must
generate, greedily and without a chat template, the tokens `OVModelForCausalLM` generates; the OpenVINO tokenizer
exported next to the IR must encode the prompt as the Hugging Face tokenizer does.
"""

import openvino as ov
import openvino_genai
import pytest
import torch
from exported_models import F32, MIXED_KINDS, PAD
from optimum.intel import OVModelForCausalLM
from testing_utils import FAMILIES, GEMMA
from transformers import AutoTokenizer

PROMPT = "the model prunes heads and channels of every layer"
NEW_TOKENS = 8


def generation_config() -> openvino_genai.GenerationConfig:
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = NEW_TOKENS  # EOS suppressed alike by both generators
    config.do_sample = False
    config.apply_chat_template = False
    return config


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_pipeline_generates_the_tokens_of_optimum_intel(family, exported):
    _, ir = exported(family)
    assert_pipelines_generate_the_tokens_of_optimum_intel(ir, family)


def test_llm_pipeline_on_gemma3_without_a_full_and_a_sliding_window_attention(exported):
    """The kept attentions keep their kinds in openvino-genai too (the prompt is longer than the window of 4)."""
    _, ir = exported("gemma3_text", MIXED_KINDS)
    assert len(AutoTokenizer.from_pretrained(ir)(PROMPT).input_ids) > GEMMA["sliding_window"]
    assert_pipelines_generate_the_tokens_of_optimum_intel(ir, "gemma3_text")


def assert_pipelines_generate_the_tokens_of_optimum_intel(ir: str, family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(ir)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    reference = OVModelForCausalLM.from_pretrained(ir, ov_config=F32)
    expected = reference.generate(
        **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD
    )[0, inputs.input_ids.shape[1]:].tolist()

    tokenized = openvino_genai.TokenizedInputs(ov.Tensor(inputs.input_ids.numpy()),
                                               ov.Tensor(inputs.attention_mask.numpy()))
    for scheduler in (None, openvino_genai.SchedulerConfig()):
        kwargs = {} if scheduler is None else {"scheduler_config": scheduler}
        pipeline = openvino_genai.LLMPipeline(ir, "CPU", **kwargs, **F32)
        encoded = pipeline.get_tokenizer().encode(PROMPT)
        assert torch.equal(torch.from_numpy(encoded.input_ids.data.copy()), inputs.input_ids)
        tokens = pipeline.generate(tokenized, generation_config()).tokens[0]
        assert tokens == expected, (family, "scheduler" if scheduler else "stateful")
        text = pipeline.generate(PROMPT, generation_config())  # the string path: OpenVINO (de)tokenizer models
        assert text == tokenizer.decode(expected, skip_special_tokens=True)
