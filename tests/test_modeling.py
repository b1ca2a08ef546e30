"""Registered pruned model types: save/load with stock transformers, cached generation."""

import json
import os
import subprocess
import sys

import pytest
import torch
from testing_utils import GEMMA3_MIXED_KINDS, FAMILIES, make_model, make_pruned_model, zero_pruned_units
from transformers import AutoModelForCausalLM, DynamicCache

import optimum_multipruner  # noqa: F401  (registers the pruned model types)
from optimum_multipruner.architectures import get_adapter
from optimum_multipruner.modeling import kept_layer_types
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import ZeroAttention, read_structure

STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[64, 0, 256, 128]
)
INPUT = torch.randint(4, 320, (2, 16), generator=torch.Generator().manual_seed(1))


def pruned_model(family, attn_implementation="eager"):
    return make_pruned_model(family, STRUCTURE, attn_implementation=attn_implementation)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Each family pruned, saved, with its logits on INPUT."""
    root = tmp_path_factory.mktemp("pruned")
    saved = {}
    for family in FAMILIES:
        model = pruned_model(family)
        model.save_pretrained(root / family)
        with torch.no_grad():
            saved[family] = (root / family, model(INPUT).logits)
    return saved


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_format(saved_models, family):
    path, _ = saved_models[family]
    files = set(os.listdir(path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == f"multipruner_{family}"
    assert config["pruning"] == STRUCTURE.to_dict()
    dense = make_model(family).config
    # dense geometry is never rewritten
    assert config["num_attention_heads"] == dense.num_attention_heads
    assert config["intermediate_size"] == dense.intermediate_size


@pytest.mark.parametrize("family", FAMILIES)
def test_reload_is_exact_with_no_missing_or_unexpected_keys(saved_models, family):
    path, expected = saved_models[family]
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    assert type(model).__name__.startswith("MultiPruned")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.equal(model(INPUT).logits, expected)
    assert read_structure(model, get_adapter(model)) == STRUCTURE


def test_reload_in_a_fresh_process(saved_models, tmp_path):
    """A new interpreter that only imports the package loads every family with identical logits."""
    script = (
        "import sys, torch, optimum_multipruner\n"
        "from transformers import AutoModelForCausalLM\n"
        "ids = torch.load(sys.argv[1])\n"
        "out = {}\n"
        "for family, path in zip(sys.argv[3::2], sys.argv[4::2]):\n"
        "    with torch.no_grad():\n"
        "        out[family] = AutoModelForCausalLM.from_pretrained(path, attn_implementation=\"eager\").eval()(ids).logits\n"
        "torch.save(out, sys.argv[2])\n"
    )
    torch.save(INPUT, tmp_path / "ids.pt")
    args = [str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")]
    for family, (path, _) in saved_models.items():
        args += [family, str(path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-c", script, *args], check=True, env=env, timeout=300)
    out = torch.load(tmp_path / "out.pt")
    for family, (_, expected) in saved_models.items():
        assert torch.equal(out[family], expected), family


def test_load_in_another_dtype(saved_models):
    path, expected = saved_models["llama"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(model(INPUT).logits.float(), expected, atol=0.1, rtol=0.1)


def test_checkpoint_whose_pruning_section_does_not_match_its_tensors_fails(saved_models, tmp_path):
    path, _ = saved_models["llama"]
    for name in os.listdir(path):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["pruning"]["intermediate_size"][3] = 192
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="layers.3.mlp"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_with_attention_less_layer_zero_and_left_padding(family, attn_implementation):
    model = pruned_model(family, attn_implementation)
    assert isinstance(model.model.layers[0].self_attn, ZeroAttention)  # layer 0 really has no attention
    input_ids = torch.randint(4, 320, (2, 12), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :5], attention_mask[0, :5] = 3, 0  # left padding
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=12, do_sample=False, pad_token_id=3)
    cached = model.generate(input_ids, use_cache=True, **kwargs)
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_gemma3_cache_masks_and_rope_follow_the_kinds_of_the_kept_attentions(tmp_path):
    """Attention removed from a full (0) and a sliding-window (1) layer of a tiny Gemma 3 whose window (4) is shorter
    than the prompt: the pruned model, cached, and its reloaded checkpoint give the logits of the dense model with
    those sub-blocks skipped, at prefill and at every decode step."""
    structure = PrunedStructure(*GEMMA3_MIXED_KINDS)
    reference = make_model("gemma3_text")
    zero_pruned_units(reference, structure)
    pruned = make_pruned_model("gemma3_text", structure)
    assert kept_layer_types(pruned.config) == ["sliding_attention", "full_attention"]
    assert DynamicCache(config=pruned.config).is_sliding == [True, False]  # by index it would be [False, True]
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.layer_types == pruned.config.layer_types  # each layer's own kind, RoPE base with it

    input_ids = torch.randint(4, 320, (2, 12), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :3], attention_mask[0, :3] = 3, 0  # left padding
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=3,
                  return_dict_in_generate=True, output_logits=True)
    expected = reference.generate(input_ids, **kwargs)
    for model in (pruned, reloaded):
        actual = model.generate(input_ids, **kwargs)
        assert torch.equal(actual.sequences, expected.sequences)
        for step, (a, b) in enumerate(zip(actual.logits, expected.logits)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"step {step}")
