"""The search's memory estimate (against what the scorer really holds), the refusal of a search that does not fit, and
the plain scorer running without autograd."""

import pytest
import torch
from testing_utils import make_model, model_selector, search_config
from transformers import LlamaConfig

from optimum_multipruner import MultiPruner, MultiPrunerConfig, get_adapter
from optimum_multipruner import memory
from optimum_multipruner.candidates import Candidate, PruningGranularity, trial
from optimum_multipruner.data import build_calibration_sets
from optimum_multipruner.memory import SearchMemoryError, estimate_search_memory

LLAMA_3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256)
LLAMA_3_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                   num_key_value_heads=8, vocab_size=128256)


def unique_bytes(tensors):
    """Bytes of distinct tensors (a tensor shared by several layers or batches counts once)."""
    unique = {(t.data_ptr(), t.device): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors_in(item)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_estimate_equals_what_the_scorer_caches(attn_implementation):
    model = make_model("llama", attn_implementation=attn_implementation)
    sequences = torch.randint(4, 300, (10, 32))  # 3 batches of 4, 4 and 2 sequences
    selector = model_selector(model, get_adapter(model), sequences, 4)
    config = MultiPrunerConfig(sequence_length=32, batch_size=4)
    estimate = estimate_search_memory(model.config, config, len(sequences), dtype=torch.float32,
                                      layer_devices=["cpu"] * 4)
    cached = [t for layer in selector.evaluator.model_pass.layer_inputs for t in layer]
    assert estimate.hidden_cache == {"cpu": unique_bytes(cached)} == {"cpu": 4 * 10 * 32 * 64 * 4}
    arguments = [t for layer in selector.evaluator.model_pass.layer_kwargs for kwargs in layer
                 for t in tensors_in(kwargs)]
    assert estimate.layer_arguments == {"cpu": unique_bytes(arguments)}
    assert estimate.transfer_per_candidate == 0


def test_reference_shapes_match_the_issue_numbers():
    """Llama-3.1-8B / 70B in bf16, 20 sequences of 2048 tokens: 10.7 GB / 54 GB of cached hidden states."""
    config = MultiPrunerConfig()
    small = estimate_search_memory(LlamaConfig(**LLAMA_3_8B), config, 20, dtype=torch.bfloat16)
    large = estimate_search_memory(LlamaConfig(**LLAMA_3_70B), config, 20, dtype=torch.bfloat16)
    assert small.hidden_cache == {"cuda": 32 * 20 * 2048 * 4096 * 2}
    assert round(small.hidden_cache["cuda"] / 1e9, 1) == 10.7 and round(large.hidden_cache["cuda"] / 1e9) == 54
    # the chunked head keeps one pass small next to the whole logits ([2, 2048, 128256] bf16 + fp32 copies: 5 GB)
    assert small.scoring_pass["cuda"] < 1.5 * 2**30


def test_cache_follows_the_layers_or_the_cache_device():
    model_config = LlamaConfig(**LLAMA_3_8B)
    layer_devices = ["cuda:0"] * 16 + ["cuda:1"] * 16
    spread = estimate_search_memory(model_config, MultiPrunerConfig(), 20, torch.bfloat16, layer_devices)
    per_layer = 20 * 2048 * 4096 * 2
    assert spread.hidden_cache == {"cuda:0": 16 * per_layer, "cuda:1": 16 * per_layer}
    assert set(spread.layer_arguments) == {"cuda:0", "cuda:1"}
    assert spread.scoring_pass["cuda:1"] >= spread.scoring_pass["cuda:0"]  # the head runs after the last layer
    in_ram = estimate_search_memory(model_config, MultiPrunerConfig(cache_device="cpu"), 20, torch.bfloat16,
                                    layer_devices)
    assert in_ram.hidden_cache == {"cpu": 32 * per_layer}
    assert in_ram.transfer_per_candidate == per_layer
    assert in_ram.per_device["cuda:0"] == spread.per_device["cuda:0"] - 16 * per_layer
    plain = estimate_search_memory(model_config, MultiPrunerConfig(accelerated_search=False), 20, torch.bfloat16)
    assert plain.hidden_cache == {} and plain.layer_arguments == {}
    with pytest.raises(ValueError, match="layer_devices"):
        estimate_search_memory(model_config, MultiPrunerConfig(), 20, torch.bfloat16, ["cuda"] * 3)


def test_search_that_does_not_fit_is_refused_before_any_weight_changes(tokenizer, calibration_file, monkeypatch):
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(memory, "free_memory", lambda device: 10_000)  # a device with 10 kB free
    config = search_config(calibration_file)
    with pytest.raises(SearchMemoryError, match=r"needs about .* MiB on cpu .* 0\.0 MiB is free.*batch_size"):
        MultiPruner(model, tokenizer).prune(config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_search_that_fits_exactly_passes_the_check_and_one_byte_less_does_not(tokenizer, calibration_file,
                                                                                 monkeypatch):
    model = make_model("llama")
    config = search_config(calibration_file, max_steps=1)
    calibration = build_calibration_sets(config, tokenizer, model.get_input_embeddings().num_embeddings)
    needed = estimate_search_memory(model.config, config, {name: len(s) for name, s in calibration.items()},
                                    dtype=torch.float32, layer_devices=["cpu"] * 4).per_device["cpu"]
    monkeypatch.setattr(memory, "free_memory", lambda device: needed - 1)
    with pytest.raises(SearchMemoryError):
        MultiPruner(model, tokenizer).prune(config, progress=False)
    monkeypatch.setattr(memory, "free_memory", lambda device: needed)
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(config, progress=False)
    assert len(pruner.record.steps) == 1


@pytest.mark.parametrize("accelerated", [False, True])
def test_scorer_builds_no_autograd_graph(accelerated):
    model = make_model("llama")  # parameters require grad, as a freshly loaded model's do
    grad_seen = []
    model.model.layers[0].register_forward_hook(lambda module, args, output: grad_seen.append(output.requires_grad))
    selector = model_selector(model, get_adapter(model), torch.randint(4, 300, (4, 16)), 2, accelerated=accelerated)
    adapter, layout = get_adapter(model), get_adapter(model).attention_layout(model.config)
    granularity = PruningGranularity(64, layout.group_width)
    candidates = [Candidate("remove_attention", 0), Candidate("remove_mlp", 0)]
    selector.select(candidates, lambda c: trial(model.model.layers[c.layer], c, adapter, layout, granularity))
    assert grad_seen and not any(grad_seen)


def test_kl_estimate_counts_the_reference_of_every_calibration_set():
    from optimum_multipruner.scoring import original_final_hidden_states

    model = make_model("llama")
    sets = {"block": torch.randint(4, 300, (6, 32)), "width": torch.randint(4, 300, (3, 32))}
    references = [original_final_hidden_states(model, get_adapter(model), s, 2) for s in sets.values()]
    counts = {name: len(s) for name, s in sets.items()}
    ppl, kl = (estimate_search_memory(model.config, MultiPrunerConfig(sequence_length=32, importance_metric=metric),
                                      counts, torch.float32, ["cpu"] * 4) for metric in ("ppl", "kl"))
    assert kl.hidden_cache["cpu"] - ppl.hidden_cache["cpu"] == unique_bytes(references)
    assert kl.scoring_pass["cpu"] > ppl.scoring_pass["cpu"]  # both models' logits per head chunk


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_that_cannot_hold_the_cache_suggests_the_cache_in_ram(tokenizer, calibration_file, monkeypatch):
    from optimum_multipruner.data import build_calibration_sets

    model = make_model("llama").to("cuda")
    on_gpu, in_ram = search_config(calibration_file, max_steps=1), search_config(calibration_file, max_steps=1,
                                                                                   cache_device="cpu")
    sizes = {name: len(s) for name, s in build_calibration_sets(on_gpu, tokenizer, 320).items()}
    needed = [estimate_search_memory(model.config, config, sizes, torch.float32, ["cuda:0"] * 4).per_device["cuda:0"]
              for config in (on_gpu, in_ram)]
    assert needed[1] < needed[0]
    monkeypatch.setattr(memory, "free_memory", lambda device: needed[1] if device.type == "cuda" else 2**40)
    with pytest.raises(SearchMemoryError, match=r"on cuda:0 .*cache_device='cpu'"):
        MultiPruner(model, tokenizer).prune(on_gpu, progress=False)
    MultiPruner(model, tokenizer).prune(in_ram, progress=False)  # only the scoring pass stays on the GPU: it fits
