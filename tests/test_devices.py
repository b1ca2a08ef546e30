"""Models dispatched by accelerate: the same search record as the plain model, surgery under hooks, placements that are
refused up front, and where the scorer keeps its cache. CUDA tests are skipped (with a reason) without CUDA."""

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from testing_utils import make_model, search_config, train_briefly
from transformers import AutoModelForCausalLM

from optimum_multipruner import MultiPruner, MultiPrunerConfig, get_adapter
from optimum_multipruner.devices import check_placement, execution_device, move_to_device
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import apply_structure

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

_TRAINED = {}


def trained_llama(tokenizer):
    """A briefly trained tiny Llama (trained once per session), as a fresh copy."""
    if "llama" not in _TRAINED:
        _TRAINED["llama"] = train_briefly(make_model("llama"), tokenizer).state_dict()
    model = make_model("llama")
    model.load_state_dict(_TRAINED["llama"])
    return model


def layer_device_map(model, layer_devices, rest="cpu"):
    """A per-layer accelerate device map: decoder layer `i` on `layer_devices[i]`, everything else on `rest`."""
    device_map = {"model.embed_tokens": rest, "model.rotary_emb": rest, "model.norm": rest, "lm_head": rest}
    device_map.update({f"model.layers.{i}": device for i, device in enumerate(layer_devices)})
    return device_map


def dispatched(model, layer_devices, rest="cpu"):
    """`model` dispatched by accelerate with hooks on every layer, even when every entry is the same device."""
    return dispatch_model(model, layer_device_map(model, layer_devices, rest), force_hooks=True)


def small_search(calibration_file, **overrides):
    values = dict(pruning_distribution=(10, 45, 45), block_types=("attention",), max_steps=5,
                  num_calibration_samples_block=80, num_calibration_samples_width=40)
    values.update(overrides)
    return search_config(calibration_file, **values)


def search(model, tokenizer, config):
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(config, progress=False)
    return pruner


def same_search(a, b, exact=True):
    """Two records made the same choices (and, `exact`, the same perplexities bit for bit)."""
    assert [(s.action, s.layer, s.ratio) for s in a.steps] == [(s.action, s.layer, s.ratio) for s in b.steps]
    assert a.structure == b.structure
    approx = (lambda x: x) if exact else (lambda x: pytest.approx(x, rel=1e-4))
    assert [s.perplexity for s in a.steps] == [approx(s.perplexity) for s in b.steps]


def test_dispatched_model_gives_the_same_record_and_weights_as_the_plain_model(tokenizer, calibration_file, tmp_path):
    config = small_search(calibration_file)
    plain = search(trained_llama(tokenizer), tokenizer, config)
    model = dispatched(trained_llama(tokenizer), ["cpu"] * 4)
    hooked = search(model, tokenizer, config)
    same_search(hooked.record, plain.record)
    assert hooked.record.start_perplexity == plain.record.start_perplexity
    for (name, a), (_, b) in zip(hooked.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert all(hasattr(layer, "_hf_hook") for layer in model.model.layers)  # the hooks survived the surgery
    ids = torch.randint(0, 300, (2, 24))
    assert torch.equal(hooked.model(ids).logits, plain.model(ids).logits)
    hooked.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", attn_implementation="eager")
    assert torch.equal(again(ids).logits, plain.model(ids).logits)


def test_apply_on_a_dispatched_model_equals_apply_on_the_plain_model(tokenizer, calibration_file):
    record = search(trained_llama(tokenizer), tokenizer, small_search(calibration_file)).record
    plain = MultiPruner(trained_llama(tokenizer)).apply(record)
    hooked = MultiPruner(dispatched(trained_llama(tokenizer), ["cpu"] * 4)).apply(record)
    ids = torch.randint(0, 300, (2, 24))
    assert torch.equal(hooked(ids).logits, plain(ids).logits)


def test_surgery_keeps_hooked_layers_working():
    """Removed sub-blocks (`ZeroAttention`/`ZeroMLP`) and sliced projections (`select_linear`) under accelerate's
    layer and sub-module hooks compute what the same surgery computes on the plain model."""
    structure = PrunedStructure([0, 4, 2, 4], [0, 2, 1, 2], [256, 0, 128, 64])
    results = []
    for hooks in (False, True):
        model = make_model("llama")
        if hooks:
            dispatched(model, ["cpu"] * 4)
            assert hasattr(model.model.layers[2].mlp.up_proj, "_hf_hook")
        apply_structure(model, get_adapter(model), structure)
        results.append(model(torch.arange(40).view(2, 20)).logits)
    assert torch.equal(results[0], results[1])


def test_layers_accelerate_keeps_offloaded_are_refused_up_front(tmp_path, tokenizer, calibration_file):
    model = make_model("llama")
    device_map = layer_device_map(model, ["cpu", "disk", "cpu", "cpu"])
    dispatch_model(model, device_map, offload_dir=str(tmp_path / "offload"))
    with pytest.raises(ValueError, match=r"decoder layers \[1\].*max_memory"):
        MultiPruner(model, tokenizer)
    with pytest.raises(ValueError, match="offloaded by accelerate"):
        check_placement(cpu_offload(make_model("llama"), execution_device="cpu"), get_adapter(model))


def test_execution_device_reads_the_hook_then_the_weights():
    model = dispatched(make_model("llama"), ["cpu"] * 4)
    assert execution_device(model.model.layers[0]) == torch.device("cpu")
    assert execution_device(torch.nn.Identity(), default=torch.device("meta")) == torch.device("meta")


def test_layer_arguments_are_moved_once_per_device():
    cos = torch.ones(1, 8, 4)
    mask = torch.zeros(2, 1, 8, 8)
    moved = {}
    first = move_to_device({"position_embeddings": (cos, cos), "attention_mask": mask, "flag": None}, "meta", moved)
    second = move_to_device({"position_embeddings": (cos, cos), "attention_mask": mask}, "meta", moved)
    assert first["position_embeddings"][0] is first["position_embeddings"][1] is second["position_embeddings"][0]
    assert first["attention_mask"] is second["attention_mask"] and first["attention_mask"].is_meta
    assert first["flag"] is None and len(moved) == 2


@pytest.mark.parametrize("cache_device", ["gpu", "meta", 0])
def test_bad_cache_device_is_refused_by_the_config(cache_device):
    with pytest.raises(ValueError, match="cache_device"):
        MultiPrunerConfig(cache_device=cache_device)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="needs a machine without a CUDA device 7")
def test_missing_cache_device_is_refused_before_any_weight_changes(tokenizer, calibration_file):
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="cache_device.*cuda:7"):
        MultiPruner(model, tokenizer).prune(small_search(calibration_file, cache_device="cuda:7"), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cache_on_another_device_makes_the_same_search(tokenizer, calibration_file):
    """`cache_device` changes where the cache lives, never the choices (CPU here: the CUDA test below moves it)."""
    records = [search(trained_llama(tokenizer), tokenizer, small_search(calibration_file, cache_device=device)).record
               for device in (None, "cpu")]
    same_search(records[0], records[1])


def test_search_resumes_with_another_cache_device(tokenizer, calibration_file, tmp_path):
    """Where the cache lives is no part of the search's identity: a search that ran out of memory resumes elsewhere."""
    first = MultiPruner(trained_llama(tokenizer), tokenizer)
    first.prune(small_search(calibration_file), progress=False, checkpoint_dir=tmp_path)
    resumed = MultiPruner(trained_llama(tokenizer), tokenizer)
    resumed.prune(small_search(calibration_file, cache_device="cpu"), progress=False, resume_from=tmp_path)
    same_search(resumed.record, first.record)


@requires_cuda
def test_cuda_search_with_the_cache_in_ram_matches_the_cache_on_the_gpu(tokenizer, calibration_file):
    records = []
    for cache_device in (None, "cpu"):
        model = trained_llama(tokenizer).to("cuda")
        records.append(search(model, tokenizer, small_search(calibration_file, cache_device=cache_device)).record)
    same_search(records[0], records[1])
    cpu = search(trained_llama(tokenizer), tokenizer, small_search(calibration_file)).record
    same_search(records[0], cpu, exact=False)


@requires_two_gpus
def test_model_dispatched_over_two_gpus_gives_the_same_record_as_one_gpu(tokenizer, calibration_file):
    config = small_search(calibration_file)
    one = search(trained_llama(tokenizer).to("cuda:0"), tokenizer, config).record
    model = dispatched(trained_llama(tokenizer), ["cuda:0", "cuda:0", "cuda:1", "cuda:1"], rest="cuda:0")
    two = search(model, tokenizer, config).record
    same_search(two, one, exact=False)


@requires_two_gpus
def test_decoder_layer_split_over_two_gpus_is_refused():
    model = make_model("llama")
    device_map = layer_device_map(model, ["cuda:0"] * 4, rest="cuda:0")
    del device_map["model.layers.1"]
    device_map.update({"model.layers.1.self_attn": "cuda:0", "model.layers.1.mlp": "cuda:1",
                       "model.layers.1.input_layernorm": "cuda:0", "model.layers.1.post_attention_layernorm": "cuda:0"})
    dispatch_model(model, device_map)
    with pytest.raises(ValueError, match="Decoder layer 1 is split over devices"):
        MultiPruner(model)
