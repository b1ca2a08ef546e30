"""OpenVINO export of pruned checkpoints: the real `optimum-cli export openvino-pruned` entry point, parity with PyTorch.

Every family is exported once per session (`conftest.exported`).

Parity runs with the KV cache and inference precision forced to f32 (the CPU default KV cache is f16) and allows an
absolute logit difference of 1e-4 (measured: at most 2.3e-7 for every family, logits of std ~0.15). Weight compression
is covered by one int4 export through the CLI and one int8 export through `export_openvino`.
"""

import filecmp
import json
import os
import subprocess
import sys

import openvino as ov
import pytest
import torch
from exported_models import F32, MIXED_KINDS, PAD, STRUCTURE, pruned_model
from optimum.intel import OVModelForCausalLM
from safetensors.torch import load_file
from testing_utils import FAMILIES, make_model, optimum_cli_console, run_optimum_cli, zero_pruned_units
from transformers import AutoModelForCausalLM

import optimum_multipruner  # registers the pruned model types
from optimum_multipruner.architectures import ADAPTERS
from optimum_multipruner.exporters import export_openvino, rewrite_exported_config
from optimum_multipruner.exporters.openvino import EXPORT_CONFIGS, default_weight_format, kept_kv_heads
from optimum_multipruner.record import RECORD_NAME

TOLERANCE = 1e-4
NEW_TOKENS = 6  # the prefill step plus five cached decode steps
PROMPTS = torch.tensor(
    [[PAD, PAD, PAD, 5, 17, 42, 9, 77, 120, 33, 61, 8], [1, 44, 90, 12, 7, 250, 31, 66, 19, 5, 88, 140]]
)  # left padding in the first row
MASK = (PROMPTS != PAD).long()


def generate(model, **kwargs):
    return model.generate(
        input_ids=PROMPTS, attention_mask=MASK, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
        pad_token_id=PAD, return_dict_in_generate=True, output_logits=True, **kwargs,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_export_matches_pytorch(family, exported):
    checkpoint, ir = exported(family)
    with open(os.path.join(ir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    adapter = ADAPTERS[family]
    assert config["model_type"] == adapter.model_type
    assert config["architectures"] == [adapter.causal_lm_class.__name__]
    assert config["pruning"] == STRUCTURE.to_dict()
    with open(os.path.join(checkpoint, RECORD_NAME), "rb") as record, open(os.path.join(ir, RECORD_NAME), "rb") as copy:
        assert record.read() == copy.read()  # the IR says how it was made

    ir_model = ov.Core().read_model(os.path.join(ir, "openvino_model.xml"))
    states = [op for op in ir_model.get_ops() if op.get_type_name() == "ReadValue"]
    kv_heads = sorted(op.get_output_partial_shape(0)[1].get_length() for op in states)
    assert kv_heads == [1, 1, 1, 1, 2, 2]  # key and value of each kept attention layer, with its own KV heads

    reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    model = OVModelForCausalLM.from_pretrained(ir, ov_config=F32)
    with torch.no_grad():
        expected_logits = reference(input_ids=PROMPTS, attention_mask=MASK).logits
    actual_logits = model(input_ids=PROMPTS, attention_mask=MASK).logits
    prefill = (expected_logits - actual_logits)[MASK.bool()].abs().max().item()
    assert prefill < TOLERANCE, f"{family}: prefill max |delta logit| {prefill:.2e}"

    expected, actual = generate(reference), generate(model)
    decode = max((a - b).abs().max().item() for a, b in zip(expected.logits, actual.logits))
    assert decode < TOLERANCE, f"{family}: cached decode max |delta logit| {decode:.2e}"
    assert torch.equal(expected.sequences, actual.sequences)


def test_the_stock_export_command_takes_a_pruned_checkpoint(exported, tmp_path):
    """The stock `optimum-cli export openvino`, unpatched, exports a pruned checkpoint (the CLI plugin registers the
    pruned model types and, through the package's hook, their export configs). What it does not do (that `export
    openvino-pruned` does): infer the task of a local folder, adjust int4 group sizes (`--group-size-fallback adjust`
    does, as test_cli_int4_export shows through openvino-pruned), give the IR the base model
    type and the record; the IR then loads where `optimum_multipruner` is imported."""
    checkpoint, _ = exported("llama")
    ir = str(tmp_path / "stock")
    command = [optimum_cli_console(), "export", "openvino", "--model", checkpoint, "--task",
               "text-generation-with-past", "--weight-format", "fp32", "--disable-convert-tokenizer", ir]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)  # a fresh start-up
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(ir, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["model_type"] == "multipruner_llama"
    assert not os.path.exists(os.path.join(ir, RECORD_NAME))
    reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    model = OVModelForCausalLM.from_pretrained(ir, ov_config=F32)
    expected, actual = generate(reference), generate(model)
    delta = max((a - b).abs().max().item() for a, b in zip(expected.logits, actual.logits))
    assert delta < TOLERANCE, f"max |delta logit| {delta:.2e} over prefill and decode"
    assert torch.equal(expected.sequences, actual.sequences)


def test_gemma3_ir_follows_the_kinds_of_the_kept_attentions(exported):
    """Gemma 3 without the attentions of a full (0) and a sliding-window (1) layer, window 4 shorter than the prompts:
    the IR's prefill and cached decode logits are those of the dense model with the sub-blocks skipped, and its tokens
    those of the pruned PyTorch model."""
    checkpoint, ir = exported("gemma3_text", MIXED_KINDS)
    dense = make_model("gemma3_text", seed=7)  # the seed `exported` prunes
    zero_pruned_units(dense, MIXED_KINDS)
    model = OVModelForCausalLM.from_pretrained(ir, ov_config=F32)
    expected, actual = generate(dense), generate(model)
    delta = max((a - b).abs().max().item() for a, b in zip(expected.logits, actual.logits))
    assert delta < TOLERANCE, f"max |delta logit| {delta:.2e} over prefill and decode"
    assert torch.equal(expected.sequences, actual.sequences)
    pruned = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    assert torch.equal(generate(pruned).sequences, actual.sequences)


def test_export_loads_without_the_plugin(exported, tmp_path):
    """A process that never imports optimum_multipruner loads every family's IR and generates the same tokens."""
    expected, irs = {}, {}
    for family in FAMILIES:
        checkpoint, irs[family] = exported(family)
        reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        tokens = reference.generate(input_ids=PROMPTS[1:], max_new_tokens=8, do_sample=False, pad_token_id=PAD)
        expected[family] = tokens[0].tolist()
    script = (
        "import json, sys, torch\n"
        "from optimum.intel import OVModelForCausalLM\n"
        "irs, prompt = json.loads(sys.argv[1]), torch.tensor([json.loads(sys.argv[2])])\n"
        "out = {}\n"
        "for family, ir in irs.items():\n"
        f"    model = OVModelForCausalLM.from_pretrained(ir, ov_config={F32!r})\n"
        "    tokens = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, pad_token_id=3)\n"
        "    out[family] = [type(model).__name__, tokens[0].tolist()]\n"
        "assert not any(name.startswith('optimum_multipruner') for name in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(irs), json.dumps(PROMPTS[1].tolist())],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for family in FAMILIES:
        assert loaded[family][1] == expected[family], family
    assert loaded["phi3"][0] == "OVPhi3ForCausalLM"  # the family-specific runtime class is picked again


def weight_types(ir: str) -> set[str]:
    model = ov.Core().read_model(os.path.join(ir, "openvino_model.xml"))
    return {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"}


def test_cli_int4_export(exported, tmp_path):
    """int4 needs the group-size fallback the plugin adds: widths 32/64 are not multiples of the group size 128."""
    checkpoint, _ = exported("llama")
    ir = str(tmp_path / "llama_int4")
    run_optimum_cli("export", "openvino-pruned", "--model", checkpoint, ir, "--weight-format", "int4",
                    "--disable-convert-tokenizer")
    assert "u4" in weight_types(ir)
    model = OVModelForCausalLM.from_pretrained(ir)
    assert model.generate(input_ids=PROMPTS, attention_mask=MASK, max_new_tokens=4, pad_token_id=PAD).shape == (2, 16)
    # group size 128 where a layer's input width allows it, else (adjust) a smaller group that divides the width
    tensors = load_file(os.path.join(checkpoint, "model.safetensors"))
    in_features = {name: tensor.shape[1] for name, tensor in tensors.items() if tensor.dim() == 2}
    groups = {}
    for op in ov.Core().read_model(os.path.join(ir, "openvino_model.xml")).get_ops():
        name = op.get_friendly_name().removeprefix("self.")
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "u4" and name in in_features:
            rows, num_groups, group = op.get_output_shape(0)
            assert num_groups * group == in_features[name], name
            groups[name] = group
    assert groups["model.layers.2.mlp.down_proj.weight"] == groups["model.layers.3.mlp.down_proj.weight"] == 128
    for name, group in groups.items():
        assert group == 128 if in_features[name] % 128 == 0 else group < 128, (name, group)
    assert groups["model.layers.1.self_attn.o_proj.weight"] == 32  # one KV group kept: 32 query channels


@pytest.mark.parametrize("family", ["gemma3_text", "olmo2"])
def test_int8_and_int4_irs_of_the_new_families(family, exported, tmp_path):
    """The quantized exports of the issue-29 families whose weights differ in shape from Llama's (Gemma 3: Gemma 2's
    sandwich-norm layer plus head_dim q/k norms; OLMo 2: width q/k norms sliced with the KV groups; SmolLM3's layer is
    Llama's): int8 per-channel logits follow PyTorch's within a quarter of
    the logits' spread (measured on random Gemma 3: max |delta| 0.023 at a spread of 0.15; a wrong layer mapping moves
    them by the whole spread), int4 holds u4 weights and generates. Random tiny weights lose too much in int4 for a
    logit bound (max |delta| 0.23 at 0.15): the int4 logits are checked through the trained quantization-aware model
    in tests/recovery/test_quantization.py."""
    checkpoint, _ = exported(family)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(checkpoint).eval()(input_ids=PROMPTS, attention_mask=MASK).logits
    for weight_format in ("int8", "int4"):
        ir = export_openvino(checkpoint, tmp_path / weight_format, weight_format=weight_format, convert_tokenizer=False)
        assert {"int8": "u8", "int4": "u4"}[weight_format] in weight_types(ir)
        model = OVModelForCausalLM.from_pretrained(ir, ov_config=F32)
        if weight_format == "int8":
            actual = model(input_ids=PROMPTS, attention_mask=MASK).logits
            spread = expected[MASK.bool()].std().item()
            assert (actual - expected)[MASK.bool()].abs().max().item() < 0.25 * spread, family
        assert model.generate(input_ids=PROMPTS, attention_mask=MASK, max_new_tokens=4, pad_token_id=PAD).shape == (2, 16)


def test_python_export_api(tmp_path, tokenizer):
    model = pruned_model("qwen3", seed=3)
    out = tmp_path / "ir"
    assert export_openvino(model, out, weight_format="int8", tokenizer=tokenizer, convert_tokenizer=False) == str(out)
    assert os.path.isfile(out / "tokenizer.json")
    assert "u8" in weight_types(str(out))
    with open(out / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["model_type"] == "qwen3"
    int8 = OVModelForCausalLM.from_pretrained(out)
    assert int8.generate(input_ids=PROMPTS, attention_mask=MASK, max_new_tokens=4, pad_token_id=PAD).shape == (2, 16)
    assert not rewrite_exported_config(out)  # already the base type
    with pytest.raises(FileExistsError, match="overwrite"):
        export_openvino(model, out, convert_tokenizer=False)
    with pytest.raises(ValueError, match="weight_format"):
        export_openvino(model, tmp_path / "other", weight_format="int3")
    assert not (tmp_path / "other").exists()
    assert sorted(EXPORT_CONFIGS) == sorted(optimum_multipruner.SUPPORTED_MODEL_TYPES)


def test_a_loaded_model_exports_like_its_checkpoint(exported, tmp_path, tokenizer):
    """A model in memory is exported as it is (no temporary checkpoint): the same IR bytes as the CLI export of its
    saved checkpoint, its tokenizer converted, and the record it is given written next to it."""
    from optimum_multipruner.record import PruningRecord

    checkpoint, ir = exported("qwen2")
    record = PruningRecord.load(os.path.join(checkpoint, RECORD_NAME))
    record.source = "in memory"
    out = tmp_path / "ir"
    export_openvino(pruned_model("qwen2"), out, tokenizer=tokenizer, record=record)
    assert filecmp.cmp(os.path.join(ir, "openvino_model.bin"), out / "openvino_model.bin", shallow=False)
    assert (out / "openvino_tokenizer.xml").is_file() and (out / "openvino_detokenizer.xml").is_file()
    with open(out / RECORD_NAME, encoding="utf-8") as handle:
        assert json.load(handle)["source"] == "in memory"


def test_a_bfloat16_model_exports_its_bfloat16_weights(tmp_path):
    """No float32 copy: the IR holds the bf16 weights (decompressed at run time), generates the tokens the PyTorch
    bf16 model generates, and the model is still whole bf16 after the export."""
    model = pruned_model("llama").to(torch.bfloat16)
    out = tmp_path / "ir"
    export_openvino(model, out, convert_tokenizer=False)
    ir_model = ov.Core().read_model(out / "openvino_model.xml")
    matrices = [op for op in ir_model.get_ops() if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 2
                and min(op.get_output_shape(0)) > 1]
    assert matrices and {op.get_element_type().get_type_name() for op in matrices} == {"bf16"}
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    prompt = PROMPTS[1:]
    expected = model.generate(input_ids=prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD)
    actual = OVModelForCausalLM.from_pretrained(out, ov_config=F32).generate(
        input_ids=prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD
    )
    assert torch.equal(expected, actual)


def test_default_weight_format_follows_the_dense_size():
    config = pruned_model("llama").config
    assert default_weight_format(config) is None
    assert kept_kv_heads(config) == [1, 2, 1]
    large = config.to_dict()
    large.update(hidden_size=2048, head_dim=512, intermediate_size=16384, vocab_size=200000)  # 1.3e9 dense
    assert default_weight_format(type(config).from_dict(large)) == "int8"


def test_from_pretrained_export_after_package_import(exported, tmp_path):
    """`OVModelForCausalLM.from_pretrained(pruned_dir, export=True)` in a process that only imported our package: the
    import registers the pruned model types and the hook that registers their export configs."""
    checkpoint, _ = exported("mistral")
    script = (
        "import sys\n"
        "import optimum_multipruner\n"
        "assert 'optimum.exporters.openvino' not in sys.modules  # registration is deferred\n"
        "from optimum.intel import OVModelForCausalLM\n"
        "model = OVModelForCausalLM.from_pretrained(sys.argv[1], export=True)\n"
        "print(model.generate(input_ids=__import__('torch').tensor([[1, 5, 9]]), max_new_tokens=3).shape)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_repo_root(), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script, checkpoint], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([1, 6])" in result.stdout


def _repo_root():
    return os.path.dirname(os.path.dirname(optimum_multipruner.__file__))
