"""GGUF export: llama.cpp (llama-cpp-python) runs the tiny pruned models as PyTorch does.

f32 files give the PyTorch model's greedy tokens for 16 new tokens and its logits within 1e-3 absolute (measured: at
most 1.4e-4 at a logit scale of ~0.6; a wrong encoding of a removed sub-block is off by the logit scale).
"""

import json
import os

import gguf
import numpy as np
import pytest
import torch
from exported_models import STRUCTURE
from testing_utils import FAMILIES, make_model, make_pruned_model, make_text, make_tokenizer

from optimum_multipruner import MultiPruner, export_gguf, get_adapter
from optimum_multipruner.exporters.gguf import ZERO_MLP_WIDTH, DeciLayer, deci_layers, llama3_rope_factors
from optimum_multipruner.record import RECORD_NAME, PruningRecord
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import dense_parameter_count

llama_cpp = pytest.importorskip("llama_cpp")

EXPORTED_FAMILIES = ("llama", "mistral", "phi3")
REFUSED = {
    "gemma2": "Gemma's sandwich norms",
    "gemma3_text": "Gemma's sandwich norms",
    "granite": "Granite's embedding, attention, residual and logit multipliers",
    "olmo2": "no norms on the branch outputs and no Q/K RMSNorms over the projection width",
    "qwen2": "Q bias",
    "qwen3": "per-head Q/K RMSNorms",
    "smollm3": "no NoPE layers",
}
TOLERANCE = 1e-3
# prompt logits of f16 / q8_0 files against PyTorch's float32: measured 3.3e-4 (f16) and 9.1e-3 (q8_0); another
# model of the same structure is 0.8 off
LOW_PRECISION_TOLERANCE = {"f16": 5e-3, "q8_0": 5e-2}
NEW_TOKENS = 16
PROMPT = "the model prunes heads"  # 6 tokens: with 16 new ones within the tiny Mistral's sliding window of 32
# Attention removed in layers 1 and 2 (not 0), both sub-blocks of layer 1 removed, MLP removed in layer 3.
OTHER_STRUCTURE = PrunedStructure(
    num_attention_heads=[4, 0, 0, 2], num_key_value_heads=[2, 0, 0, 1], intermediate_size=[256, 0, 128, 0]
)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


@pytest.fixture
def run_gguf(monkeypatch):
    """`run_gguf(path)` -> llama-cpp-python's model of a GGUF file (1 thread, logits of every position).

    The CPU backend's extra weight buffers (AMX / repacked q8_0) stop this test machine with an illegal instruction,
    so they are turned off; they change only how weights are laid out in memory, not the results.
    """
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", without_extra_buffers)
    opened = []

    def load(path):
        opened.append(llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False))
        return opened[-1]

    yield load
    for model in opened:
        model.close()


def greedy(llm, prompt: list[int]) -> list[int]:
    """16 greedy tokens from llama.cpp, one decode step each (its KV cache)."""
    llm.reset()
    llm.eval(prompt)
    tokens = []
    for _ in range(NEW_TOKENS):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(tokens[-1:])
    return tokens


def check_runs_as_pytorch(model, tokenizer, path, run_gguf) -> None:
    prompt = tokenizer(PROMPT).input_ids
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()
        logits = model(torch.tensor([expected])).logits[0].numpy()
    llm = run_gguf(path)
    assert llm.tokenize(PROMPT.encode(), add_bos=True) == prompt
    assert greedy(llm, prompt) == expected[len(prompt):]
    llm.reset()
    llm.eval(expected)
    assert np.abs(np.asarray(llm.scores[: len(expected)]) - logits).max() < TOLERANCE


@pytest.mark.parametrize("structure", [STRUCTURE, OTHER_STRUCTURE], ids=["layer0_attention", "other_layers"])
@pytest.mark.parametrize("family", EXPORTED_FAMILIES)
def test_f32_gguf_runs_as_pytorch(family, structure, tmp_path, run_gguf):
    model, tokenizer = make_pruned_model(family, structure, seed=7), make_tokenizer()
    path = export_gguf(model, tmp_path / "model.gguf", "f32", tokenizer=tokenizer)
    check_runs_as_pytorch(model, tokenizer, path, run_gguf)


@pytest.mark.parametrize(
    "rope", [{"rope_type": "default", "rope_theta": 500.0}, {"rope_type": "linear", "rope_theta": 10000.0,
                                                              "factor": 4.0}, LLAMA3_ROPE],
    ids=["theta", "linear", "llama3"],
)
def test_dense_model_and_rope_scaling(rope, tmp_path, run_gguf):
    model, tokenizer = make_model("llama", seed=3, rope_parameters=rope), make_tokenizer()
    path = export_gguf(model, tmp_path / "dense.gguf", "f32", tokenizer=tokenizer)
    check_runs_as_pytorch(model, tokenizer, path, run_gguf)


LLAMA31_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # Llama 3.1's


@pytest.mark.parametrize("rope, head_dim", [(LLAMA3_ROPE, 16), (LLAMA31_ROPE, 128)], ids=["tiny", "llama3.1"])
def test_llama3_rope_factors_give_transformers_frequencies(rope, head_dim):
    """Base frequencies divided by our factors are transformers' "llama3" inverse frequencies (which it computes in
    float32: relative 1e-5), through the smooth band between the low and high frequencies too."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_parameters=rope,
                         max_position_embeddings=4 * rope["original_max_position_embeddings"])
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    base = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factors = llama3_rope_factors(rope, config, head_dim=head_dim).double()
    torch.testing.assert_close(base / factors, expected.double(), rtol=1e-5, atol=0)
    assert ((factors > 1) & (factors < rope["factor"])).any()  # the smooth band is compared, not only its ends


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_f16_and_q8_0_load_and_generate(outtype, tmp_path, run_gguf):
    model, tokenizer = make_pruned_model("llama", STRUCTURE, seed=7), make_tokenizer()
    path = export_gguf(model, tmp_path / f"{outtype}.gguf", outtype, tokenizer=tokenizer)
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(path).tensors}
    assert types["blk.2.attn_q.weight"] == outtype.upper() and types["blk.2.attn_norm.weight"] == "F32"
    assert types["blk.1.attn_k.weight"] == ("F16" if outtype == "f16" else "Q8_0")  # 64 x 16: whole q8_0 rows
    prompt = tokenizer(PROMPT).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].numpy()
    llm = run_gguf(path)
    llm.eval(prompt)
    error = np.abs(np.asarray(llm.scores[: len(prompt)]) - logits).max()
    assert error < LOW_PRECISION_TOLERANCE[outtype], error  # a wrong tensor or layout is off by the logit scale


def test_deci_layers_encode_what_llama_cpp_cannot_load_or_run():
    assert deci_layers(STRUCTURE) == [
        DeciLayer(heads=1, kv_heads=0, ffn_length=64, zero_attention=True),  # "linear attention" of zeros
        DeciLayer(heads=2, kv_heads=1, ffn_length=ZERO_MLP_WIDTH, zero_mlp=True),  # attention kept, MLP removed
        DeciLayer(heads=4, kv_heads=2, ffn_length=256),
        DeciLayer(heads=2, kv_heads=1, ffn_length=128),
    ]
    assert deci_layers(OTHER_STRUCTURE)[1:3] == [DeciLayer(0, 0, 0), DeciLayer(0, 0, 128)]  # as llama.cpp reads them


def test_every_family_is_exported_or_refused_with_its_reason():
    assert sorted([*EXPORTED_FAMILIES, *REFUSED]) == FAMILIES


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_family_llama_cpp_cannot_run_is_refused_before_writing(family, tmp_path):
    model = make_pruned_model(family, STRUCTURE, seed=7)
    with pytest.raises(ValueError, match=REFUSED[family]):
        export_gguf(model, tmp_path / "model.gguf", tokenizer=make_tokenizer())
    assert os.listdir(tmp_path) == []


def test_folder_export_carries_record_structure_card_and_tokenizer(tmp_path, run_gguf):
    model = make_model("llama", seed=7)
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    adapter = get_adapter(model)
    record = PruningRecord(model_type="llama", num_hidden_layers=4, dense_parameters=dense_parameter_count(
        model.config, adapter), structure=STRUCTURE, weight_reorder=False, source="tests")
    pruner = MultiPruner(model, tokenizer)
    pruner.apply(record)
    pruner.save_pretrained(tmp_path / "pruned")
    path = export_gguf(tmp_path / "pruned", tmp_path / "model.gguf", "f32")
    fields = {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()
              if not name.startswith("GGUF.")}
    record_text = (tmp_path / "pruned" / RECORD_NAME).read_text()
    assert fields["general.architecture"] == "deci"
    assert fields["multipruner.record"] == record_text
    assert json.loads(fields["multipruner.structure"]) == STRUCTURE.to_dict()
    assert fields["multipruner.model_card"] == (tmp_path / "pruned" / "README.md").read_text()
    assert fields["deci.attention.head_count"] == [1, 2, 4, 2] and fields["deci.feed_forward_length"][1] == 32
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert len(fields["tokenizer.ggml.tokens"]) == model.config.vocab_size
    check_runs_as_pytorch(pruner.model, tokenizer, path, run_gguf)


def test_only_a_pruned_model_is_tagged_pruning(tmp_path):
    tokenizer = make_tokenizer()
    dense = export_gguf(make_model("llama", seed=7), tmp_path / "dense.gguf", "f32", tokenizer=tokenizer)
    pruned = export_gguf(make_pruned_model("llama", STRUCTURE, seed=7), tmp_path / "pruned.gguf", "f32",
                         tokenizer=tokenizer)
    assert gguf.GGUFReader(dense).fields["general.tags"].contents() == ["multipruner"]
    assert gguf.GGUFReader(pruned).fields["general.tags"].contents() == ["pruning", "multipruner"]


def test_vocabulary_is_padded_to_the_embedding_rows(tmp_path, run_gguf):
    model, tokenizer = make_pruned_model("llama", STRUCTURE, seed=7), make_tokenizer(vocab_size=300)
    path = export_gguf(model, tmp_path / "model.gguf", "f32", tokenizer=tokenizer)
    tokens = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 320 and tokens[300:302] == ["[PAD0]", "[PAD1]"]
    assert run_gguf(path).tokenize(PROMPT.encode(), add_bos=True) == tokenizer(PROMPT).input_ids


def make_sentencepiece_style_tokenizer():
    """A BPE tokenizer with byte fallback and a "▁" word prefix, as transformers converts SentencePiece models (Llama 2,
    Mistral): llama.cpp runs it as a SentencePiece vocabulary, merging by score."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = ["<unk>", "<s>", "</s>", "<pad>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    backend.train_from_iterator(make_text(), trainers.BpeTrainer(vocab_size=320, special_tokens=special,
                                                                 show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def test_sentencepiece_style_tokenizer_tokenizes_as_transformers(tmp_path, run_gguf):
    model, tokenizer = make_pruned_model("llama", STRUCTURE, seed=7), make_sentencepiece_style_tokenizer()
    llm = run_gguf(export_gguf(model, tmp_path / "model.gguf", "f32", tokenizer=tokenizer))
    # "é": byte fallback; "ter atesn ende b": merged otherwise without scores (left to right, not by merge rank)
    for text in (PROMPT, "small fast block, attention network; weights 7!", "é quiet river", "ter atesn ende b"):
        assert llm.tokenize(text.encode(), add_bos=True) == tokenizer(text).input_ids


def test_existing_file_is_kept_without_overwrite(tmp_path):
    model, tokenizer = make_pruned_model("llama", STRUCTURE, seed=7), make_tokenizer()
    target = tmp_path / "model.gguf"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_gguf(model, target, tokenizer=tokenizer)
    assert target.read_bytes() == b"keep"
    export_gguf(model, target, tokenizer=tokenizer, overwrite=True)
    assert target.read_bytes()[:4] == b"GGUF" and sorted(os.listdir(tmp_path)) == ["model.gguf"]
    with pytest.raises(ValueError, match="outtype"):
        export_gguf(model, tmp_path / "other.gguf", "q4_0", tokenizer=tokenizer)
