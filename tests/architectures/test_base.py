"""The adapter registry, decoder-layer layouts and the attention-removal policy of `architectures/`."""

import copy
import pkgutil

import pytest
import torch
from testing_utils import CONFIGS, FAMILIES, make_model, search_config
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import optimum_multipruner.architectures as architectures
from optimum_multipruner import MultiPruner, PruningRecord, count_parameters
from optimum_multipruner.architectures import (
    ADAPTERS,
    PRE_NORM_LAYER,
    ArchitectureAdapter,
    DecoderLayerLayout,
    get_adapter,
    register_adapter,
)
from optimum_multipruner.candidates import (
    STAGE_ACTIONS,
    Candidate,
    PruningGranularity,
    apply_candidate,
    candidates_for,
    trial,
)
from optimum_multipruner.modeling import (
    PRUNED_CONFIG_CLASSES,
    PRUNED_MODEL_CLASSES,
    kept_layer_types,
    register_pruned_models,
)
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import apply_structure, read_structure, remove_mlp

# Layer 0 without attention, layer 1 without MLP.
REMOVES_ATTENTION = PrunedStructure([0, 4, 4, 4], [0, 2, 2, 2], [256, 0, 256, 256])
MIXED_ATTENTION = dict(
    use_sliding_window=True, sliding_window=8,
    layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# --------------------------------------------------------------------------- registry
def test_every_family_module_registers_exactly_one_adapter():
    modules = [m.name for m in pkgutil.iter_modules(architectures.__path__) if m.name != "base"]
    by_module = {}
    for adapter in ADAPTERS.values():
        by_module.setdefault(type(adapter).__module__.rsplit(".", 1)[-1], []).append(adapter.model_type)
    assert sorted(by_module) == sorted(modules) and all(len(types) == 1 for types in by_module.values())
    assert "granite" in ADAPTERS


def test_tests_and_pruned_classes_cover_every_registered_family():
    assert sorted(CONFIGS) == sorted(ADAPTERS)  # a new family must come with its tiny test config
    register_pruned_models()
    assert sorted(PRUNED_MODEL_CLASSES) == sorted(ADAPTERS)
    for model_type, adapter in ADAPTERS.items():
        assert issubclass(PRUNED_MODEL_CLASSES[model_type], adapter.causal_lm_class)
        assert PRUNED_CONFIG_CLASSES[model_type].model_type == f"multipruner_{model_type}"


def test_unknown_family_error_names_every_registered_family():
    with pytest.raises(ValueError) as error:
        get_adapter("gpt2")
    for adapter in ADAPTERS.values():
        assert adapter.model_type in str(error.value) and adapter.display_name in str(error.value)


def test_register_adapter_refuses_an_incomplete_or_duplicate_adapter():
    before = dict(ADAPTERS)

    class NoLayout(ArchitectureAdapter):
        model_type, display_name, stem = "nolayout", "No layout", "NoLayout"
        config_class, causal_lm_class = LlamaConfig, LlamaForCausalLM

    with pytest.raises(TypeError, match="layer_layout"):
        register_adapter(NoLayout)

    class SecondLlama(NoLayout):
        model_type = "llama"
        layer_layout = PRE_NORM_LAYER

    with pytest.raises(ValueError, match="already has the adapter LlamaAdapter"):
        register_adapter(SecondLlama)
    assert ADAPTERS == before


class ToyConfig(LlamaConfig):
    model_type = "toyfamily"


class ToyForCausalLM(LlamaForCausalLM):
    config_class = ToyConfig


@pytest.fixture
def toy_family(request):
    """A family added the way a new adapter file adds one: a single registered class (removed afterwards); with a
    parameter (`indirect`), the reason its adapter gives for refusing attention-block removal."""
    blocker = getattr(request, "param", None)

    @register_adapter
    class ToyAdapter(ArchitectureAdapter):
        model_type, display_name, stem = "toyfamily", "Toy", "Toy"
        config_class, causal_lm_class = ToyConfig, ToyForCausalLM
        layer_layout = PRE_NORM_LAYER

        def attention_removal_blocker(self, config):
            return blocker

    try:
        yield ADAPTERS["toyfamily"]
    finally:
        for registry in (ADAPTERS, PRUNED_CONFIG_CLASSES, PRUNED_MODEL_CLASSES):
            registry.pop("toyfamily", None)


def make_toy_model():
    torch.manual_seed(0)
    values = {k: v for k, v in CONFIGS["llama"]().to_dict().items() if k not in ("model_type", "architectures")}
    return ToyForCausalLM(ToyConfig(**values)).eval()


def test_one_registered_adapter_is_all_a_family_needs_to_be_pruned_saved_and_loaded(toy_family, tmp_path):
    model = make_toy_model()
    record = PruningRecord("toyfamily", 4, count_parameters(model), REMOVES_ATTENTION, weight_reorder=True)
    pruned = MultiPruner(model).apply(record)
    assert type(pruned).__name__ == "MultiPrunedToyForCausalLM"
    pruned.save_pretrained(tmp_path)
    ids = torch.randint(4, 320, (1, 10), generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned(ids).logits)
    assert read_structure(reloaded, get_adapter(reloaded)) == REMOVES_ATTENTION


# --------------------------------------------------------------------------- the adapter contract
IDS = torch.randint(4, 320, (2, 12), generator=torch.Generator().manual_seed(0))


def snapshot(model):
    """Everything a trial must leave as it found it: weights, which module sits where and its class, the logits."""
    with torch.no_grad():
        logits = model(IDS).logits
    return state(model), [(name, module, type(module)) for name, module in model.named_modules()], logits


def trial_traces(model, adapter):
    """Every candidate of every stage, tried on `model` (its layer 0 already shrunk for good): the candidates whose
    trial changed nothing while it ran, and those that left a trace afterwards."""
    layers, layout = adapter.decoder_layers(model), adapter.attention_layout(model.config)
    granularity = PruningGranularity(mlp_group=64, attention_group=layout.group_width)
    for action in (*STAGE_ACTIONS["mlp"], *STAGE_ACTIONS["attention"]):  # a pruned layer's trials are checked too
        apply_candidate(layers[0], Candidate(action, 0), adapter, layout, granularity)
    inert, leaking = [], []
    for stage in STAGE_ACTIONS:
        for candidate in candidates_for(stage, layers, adapter, layout, granularity):
            weights, modules, logits = snapshot(model)
            with trial(layers[candidate.layer], candidate, adapter, layout, granularity):
                with torch.no_grad():
                    inert += [candidate] if torch.equal(model(IDS).logits, logits) else []
            after_weights, after_modules, after_logits = snapshot(model)
            same_weights = after_weights.keys() == weights.keys() and all(
                torch.equal(after_weights[k], weights[k]) for k in weights)
            if not (same_weights and after_modules == modules and torch.equal(after_logits, logits)):
                leaking.append(candidate)
    return inert, leaking


@pytest.mark.parametrize("family", FAMILIES)
def test_head_logits_from_the_last_layer_output_are_the_model_logits(family):
    """What the accelerated scorer computes from cached hidden states (Granite's `logits_scaling`, Gemma 2's final
    soft-capping included) is what the model's forward gives."""
    model = make_model(family)
    adapter = get_adapter(model)
    outputs = []
    hook = adapter.decoder_layers(model)[-1].register_forward_hook(
        lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output))
    with torch.no_grad():
        logits = model(IDS).logits
        hook.remove()
        torch.testing.assert_close(adapter.head_logits(model, outputs[0]), logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", [*FAMILIES, "toyfamily"])
def test_a_trial_of_every_candidate_kind_leaves_the_model_as_it_was(family, request):
    if family == "toyfamily":
        request.getfixturevalue("toy_family")
    model = make_toy_model() if family == "toyfamily" else make_model(family)
    inert, leaking = trial_traces(model, get_adapter(model))
    assert inert == [] and leaking == []


def test_an_adapter_that_edits_a_weight_in_place_is_caught(toy_family):
    class InPlaceAdapter(type(toy_family)):
        def select_mlp_channels(self, mlp, channels):
            with torch.no_grad():
                mlp.down_proj.weight.mul_(0.5)  # breaks the contract: the trial cannot undo it
            super().select_mlp_channels(mlp, channels)

    model = make_toy_model()
    _, leaking = trial_traces(model, InPlaceAdapter())
    assert {candidate.action for candidate in leaking} == {"shrink_mlp"}


# --------------------------------------------------------------------------- layer layouts
def test_a_layer_with_an_unknown_module_is_refused_before_any_change(tokenizer, calibration_file):
    model = make_model("llama")
    model.model.layers[1].post_feedforward_layernorm = LlamaRMSNorm(64)  # a norm whose branch nobody declared
    before = state(model)
    with pytest.raises(ValueError, match=r"Decoder layer 1 .*unknown \['post_feedforward_layernorm'\]"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False)
    with pytest.raises(ValueError, match="Decoder layer 1"):
        MultiPruner(model).apply(PruningRecord("llama", 4, 0, REMOVES_ATTENTION, weight_reorder=True))
    assert_unchanged(model, before)


class Olmo2Adapter(ArchitectureAdapter):
    """Post-norm layers: `x + norm(attn(x))`, `h + norm(mlp(h))` (not registered: only for this test)."""

    model_type, display_name, stem = "olmo2", "OLMo 2", "Olmo2"
    config_class, causal_lm_class = Olmo2Config, Olmo2ForCausalLM
    layer_layout = DecoderLayerLayout(
        attention="self_attn", mlp="mlp", attention_norms=("post_attention_layernorm",),
        mlp_norms=("post_feedforward_layernorm",),
    )


def test_a_post_norm_layer_is_refused_under_a_pre_norm_layout_and_pruned_right_under_its_own():
    torch.manual_seed(0)
    model = Olmo2ForCausalLM(Olmo2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()

    class WrongLayout(Olmo2Adapter):
        layer_layout = PRE_NORM_LAYER  # what the old default silently assumed for every family

    with pytest.raises(ValueError, match=r"missing \['input_layernorm'\]"):
        read_structure(model, WrongLayout())
    with pytest.raises(AttributeError, match="input_layernorm"):  # never silently adds a module
        WrongLayout().replace_attention(model.model.layers[0], torch.nn.Identity())

    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.model.layers[1].mlp.down_proj.weight.zero_()  # the MLP branch adds norm(0) = 0
    remove_mlp(model.model.layers[1], Olmo2Adapter())
    ids = torch.randint(4, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    # the attention's own output norm is untouched: only the MLP's norm went with it
    layer = model.model.layers[1]
    assert type(layer.post_attention_layernorm) is type(reference.model.layers[1].post_attention_layernorm)
    assert isinstance(layer.post_feedforward_layernorm, torch.nn.Identity)


# --------------------------------------------------------------------------- attention removal policy
def test_mixed_sliding_and_full_attention_loses_attention_blocks_with_their_kinds():
    """Qwen2 with sliding-window layers after `max_window_layers`: attention blocks go, and the kept ones keep their
    kinds (cached generation = uncached; Gemma 3's test in test_modeling checks the logits against the dense model)."""
    mixed = make_model("qwen2", **MIXED_ATTENTION)
    assert get_adapter(mixed).attention_removal_blocker(mixed.config) is None
    pruned = MultiPruner(mixed).apply(PruningRecord("qwen2", 4, 0, REMOVES_ATTENTION, weight_reorder=True))
    assert read_structure(pruned, get_adapter(pruned)) == REMOVES_ATTENTION
    assert kept_layer_types(pruned.config) == ["full_attention", "sliding_attention", "sliding_attention"]
    ids = torch.randint(4, 320, (1, 40), generator=torch.Generator().manual_seed(0))  # longer than the window
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=3)
    assert torch.equal(pruned.generate(ids, use_cache=True, **kwargs), pruned.generate(ids, use_cache=False, **kwargs))


BLOCKED = "the toy cache cannot tell its layers' kinds"


@pytest.mark.parametrize("toy_family", [BLOCKED], indirect=True)
def test_a_family_that_cannot_carry_its_kinds_forbids_removing_attention(toy_family):
    model = make_toy_model()
    assert toy_family.attention_removal_blocker(model.config) == BLOCKED
    REMOVES_ATTENTION.validate(make_model("llama").config, get_adapter("llama"))
    before = state(model)
    with pytest.raises(ValueError, match=f"Layer 0 has its attention removed, but {BLOCKED}"):
        apply_structure(model, toy_family, REMOVES_ATTENTION)
    with pytest.raises(ValueError, match="Layer 0 has its attention removed"):
        MultiPruner(model).apply(PruningRecord("toyfamily", 4, 0, REMOVES_ATTENTION, weight_reorder=True))
    assert_unchanged(model, before)
    narrower = PrunedStructure([4, 2, 4, 4], [2, 1, 2, 2], [256, 0, 128, 256])  # no attention removed: fine
    apply_structure(model, toy_family, narrower)
    assert read_structure(model, toy_family) == narrower


@pytest.mark.parametrize("toy_family", [BLOCKED], indirect=True)
def test_search_that_could_remove_attention_is_refused_before_it_starts(toy_family, tokenizer, calibration_file,
                                                                       tmp_path):
    model = make_toy_model()
    before = state(model)
    with pytest.raises(ValueError, match=f"may remove attention blocks, but {BLOCKED}.*block_types"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False,
                                            checkpoint_dir=tmp_path / "progress")
    assert_unchanged(model, before)
    assert not (tmp_path / "progress").exists()
    # without attention-block removal the same model is searched and pruned
    pruner = MultiPruner(model, tokenizer)
    pruned = pruner.prune(search_config(calibration_file, block_types=("mlp",), max_steps=2), progress=False)
    assert pruner.record.steps[0].action == "remove_mlp" and len(pruner.record.steps) == 2
    assert all(pruner.record.structure.num_key_value_heads)  # no attention removed
    assert type(pruned).__name__ == "MultiPrunedToyForCausalLM"
