"""OpenVINO export of pruned checkpoints: the real `optimum-cli export openvino` entry point, parity with PyTorch.

Parity runs with the KV cache and inference precision forced to f32 (the CPU default KV cache is f16) and allows an
absolute logit difference of 1e-4 (measured: at most 2.3e-7 for every family, logits of std ~0.15). Weight compression
is covered by one int4 export through the CLI and one int8 export through `export_openvino`.
"""

import json
import os
import subprocess
import sys

import openvino as ov
import pytest
import torch
from optimum.intel import OVModelForCausalLM
from testing_utils import FAMILIES, make_pruned_model, make_tokenizer, run_optimum_cli
from transformers import AutoModelForCausalLM

import optimum_multipruner  # registers the pruned model types
from optimum_multipruner.architectures import ADAPTERS
from optimum_multipruner.exporters import export_openvino, rewrite_exported_config
from optimum_multipruner.exporters.openvino import EXPORT_CONFIGS, default_weight_format, kept_kv_heads
from optimum_multipruner.structure import PrunedStructure

# Layer 0 without attention, layer 1 without MLP, mixed KV heads and MLP widths.
STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[64, 0, 256, 128]
)
F32 = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}
TOLERANCE = 1e-4
NEW_TOKENS = 6  # the prefill step plus five cached decode steps
PAD = 3
PROMPTS = torch.tensor(
    [[PAD, PAD, PAD, 5, 17, 42, 9, 77, 120, 33, 61, 8], [1, 44, 90, 12, 7, 250, 31, 66, 19, 5, 88, 140]]
)  # left padding in the first row
MASK = (PROMPTS != PAD).long()


def pruned_model(family: str, seed: int = 7):
    return make_pruned_model(family, STRUCTURE, seed=seed)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def exported(workdir):
    """family -> (pruned checkpoint dir, IR dir exported by `optimum-cli export openvino` without `--task`)."""
    cache = {}

    def get(family):
        if family not in cache:
            checkpoint, ir = str(workdir / f"{family}_pruned"), str(workdir / f"{family}_ov")
            pruned_model(family).save_pretrained(checkpoint)
            make_tokenizer().save_pretrained(checkpoint)
            run_optimum_cli("export", "openvino", "--model", checkpoint, ir, "--disable-convert-tokenizer")
            cache[family] = checkpoint, ir
        return cache[family]

    return get


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
        "    model = OVModelForCausalLM.from_pretrained(ir, ov_config={'KV_CACHE_PRECISION': 'f32'})\n"
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


def test_cli_int4_export(exported, workdir):
    """int4 needs the group-size fallback the plugin adds: widths 32/64 are not multiples of the group size 128."""
    checkpoint, _ = exported("llama")
    ir = str(workdir / "llama_int4")
    run_optimum_cli("export", "openvino", "--model", checkpoint, ir, "--weight-format", "int4",
                    "--disable-convert-tokenizer")
    assert "u4" in weight_types(ir)
    model = OVModelForCausalLM.from_pretrained(ir)
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


def test_default_weight_format_follows_the_dense_size():
    config = pruned_model("llama").config
    assert default_weight_format(config) is None
    assert kept_kv_heads(config) == [1, 2, 1]
    large = config.to_dict()
    large.update(hidden_size=2048, head_dim=512, intermediate_size=16384, vocab_size=200000)  # 1.3e9 dense
    assert default_weight_format(type(config).from_dict(large)) == "int8"


def test_from_pretrained_export_after_package_import(exported, tmp_path):
    """`OVModelForCausalLM.from_pretrained(pruned_dir, export=True)` in a process that imported only our package."""
    checkpoint, _ = exported("mistral")
    script = (
        "import sys\n"
        "import optimum_multipruner\n"
        "from optimum_multipruner.exporters import enable_lazy_openvino_registration\n"
        "enable_lazy_openvino_registration()\n"
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
