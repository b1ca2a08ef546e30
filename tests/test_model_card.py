"""The model card `MultiPruner.save_pretrained` writes: Hub metadata, the `info` table, settings, loading, record."""

import dataclasses
import re

import pytest
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id
from testing_utils import make_model, make_tokenizer

from optimum.commands.multipruner.info import structure_summary
from optimum_multipruner import MultiPruner, MultiPrunerConfig, get_adapter
from optimum_multipruner.evaluation import write_results_json
from optimum_multipruner.model_card import MODEL_CARD_NAME, STRUCTURE_HEADER, write_model_card
from optimum_multipruner.record import PruningRecord, PruningStep
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import dense_parameter_count

STRUCTURE = PrunedStructure(num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1],
                            intermediate_size=[64, 0, 256, 128])
SETTINGS = MultiPrunerConfig(target_ratio=0.3, calibration_dataset="alpaca", num_calibration_samples_block=8,
                             num_calibration_samples_width=4, sequence_length=64)


def pruned(name_or_path: str = "org/tiny-llama", **record_fields):
    model = make_model("llama", seed=1)
    model.config._name_or_path = name_or_path
    record = PruningRecord(
        model_type="llama", num_hidden_layers=4, dense_parameters=dense_parameter_count(model.config, get_adapter(model)),
        structure=STRUCTURE, weight_reorder=False, config=SETTINGS, start_perplexity={"block": 12.5},
        steps=[PruningStep(1, "block", "remove_attention", 0, 13.25, 0.05, 1000, 0)], **record_fields,
    )
    pruner = MultiPruner(model, make_tokenizer())
    pruner.apply(record)
    return pruner


def table_rows(text: str) -> list[dict]:
    """The structure table of a card, as `info`'s rows."""
    lines = text[text.index(STRUCTURE_HEADER):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        layer, heads, kv_heads, width, parameters = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append({"layer": int(layer), "attention_heads": int(heads), "kv_heads": int(kv_heads),
                     "mlp_width": int(width), "parameters": int(parameters.replace(",", ""))})
    return rows


def test_save_pretrained_writes_a_card_the_hub_reads(tmp_path):
    pruned().save_pretrained(tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / MODEL_CARD_NAME)
    data = card.data.to_dict()
    assert data == ModelCardData(**data).to_dict()  # the metadata round-trips through the Hub's own class
    assert data["base_model"] == "org/tiny-llama" and validate_repo_id(data["base_model"]) is None
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert set(data["tags"]) >= {"pruning", "multipruner"}
    assert table_rows(card.text) == structure_summary(str(tmp_path / "out"))["layers"]
    for expected in ("MultiPruner", "`44:52:4`", "13.250 after the last step (dense: block 12.500)",
                     "import optimum_multipruner", "export openvino-pruned", "--task text-generation-with-past",
                     "OVModelForCausalLM", "llama-cli", "| 1 | block | remove_attention"):
        assert expected in card.text
    assert "## Recovery" not in card.text and "## Evaluation" not in card.text


def test_local_base_model_license_evaluation_and_recovery(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    ModelCard("---\nlicense: apache-2.0\n---\n# base\n").save(base / MODEL_CARD_NAME)
    pruner = pruned(str(base))
    pruner.record.recovery = {"config": {"method": "distillation", "teacher": "org/tiny-llama"},
                              "tokens_seen": 1250000, "data_sha256": "ab" * 32, "loss_curve": [3.5, 2.25]}
    results = tmp_path / "eval.json"
    write_results_json({"model": "out", "backend": "pytorch", "results": [{
        "kind": "perplexity", "protocol": "wikitext2", "perplexity": 31.5, "num_windows": 2,
        "num_windows_available": 9, "sequence_length": 64, "dataset": "wikitext2"}]}, results)
    (tmp_path / "out").mkdir()
    path = write_model_card(tmp_path / "out", pruner.model.config, pruner.record, evaluation_files=[results])
    card = ModelCard.load(path)
    assert card.data.license == "apache-2.0" and card.data.base_model is None  # a local folder is no Hub id
    assert "31.5000" in card.text and "2/9 windows of 64 tokens" in card.text
    recovery = card.text[card.text.index("## Recovery"):]
    for expected in ("distillation", "1,250,000", "org/tiny-llama", "2.2500", "ab" * 32):
        assert expected in recovery


@pytest.mark.parametrize("recovery", [None, {}])
def test_no_recovery_section_without_recovery(recovery, tmp_path):
    pruner = pruned()
    pruner.record.recovery = recovery
    text = ModelCard.load(write_model_card(tmp_path, pruner.model.config, pruner.record)).text
    assert "## Recovery" not in text
    assert re.search(r"\*\*\d+\.\d\d%\*\* of its parameters removed", text)


def test_a_recovered_card_keeps_its_base_model_and_says_what_recovery_did(tmp_path):
    pruned().save_pretrained(tmp_path / "pruned")  # the card of the pruned checkpoint names org/tiny-llama
    pruner = MultiPruner.from_pretrained(tmp_path / "pruned")
    calibration = tmp_path / "private" / "calibration.jsonl"
    pruner.record.config = dataclasses.replace(SETTINGS, calibration_dataset=str(calibration))
    pruner.record.recovery = {"config": {"method": "full", "dataset": str(tmp_path / "private" / "train.jsonl")},
                              "teacher": str(tmp_path / "private" / "dense"), "tokens_seen": 8192,
                              "loss_curve": [{"step": 2, "tokens": 128, "loss": 1.5},
                                             {"step": 4, "tokens": 256, "loss": 0.25}]}
    pruner.save_pretrained(tmp_path / "recovered")
    card = ModelCard.load(tmp_path / "recovered" / MODEL_CARD_NAME)
    assert card.data.base_model == "org/tiny-llama"
    assert card.text.lstrip().startswith("# tiny-llama, pruned with MultiPruner, then recovered")
    for expected in ("then recovered by distillation from the dense model (8,192 tokens)",
                     "calibration perplexity (before recovery): 13.250", "1.5000 at the first logged step, 0.2500",
                     "* teacher: dense", "`calibration.jsonl`", "`train.jsonl`"):
        assert expected in card.text
    assert "training-free" not in card.text
    assert str(tmp_path) not in card.text  # local paths by name only


def test_no_pruning_claims_for_a_dense_model(tmp_path):
    MultiPruner(make_model("llama"), make_tokenizer()).save_pretrained(tmp_path / "dense")
    card = ModelCard.load(tmp_path / "dense" / MODEL_CARD_NAME)
    assert "pruning" not in card.data.tags
    assert "pruned with" not in card.text and "of its parameters removed" not in card.text


@pytest.mark.parametrize("family, gguf", [("llama", True), ("qwen2", False), ("granite", False)])
def test_the_gguf_paragraph_only_for_families_the_exporter_accepts(family, gguf, tmp_path):
    from optimum_multipruner.exporters.gguf import check_gguf_support

    model = make_model(family)
    adapter = get_adapter(model)
    try:
        check_gguf_support(model.config, adapter)
        exports = True
    except ValueError:
        exports = False
    assert exports == gguf
    text = ModelCard.load(write_model_card(tmp_path, model.config)).text
    assert ("llama-cli" in text) == gguf
