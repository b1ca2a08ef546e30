"""Quantization-aware distillation (NNCF FQ_LORA): the int4 model learns from the teacher, exports to an int4 IR whose
logits match the fake-quantized PyTorch model, resumes to the same bytes, and refuses what it cannot do."""

import copy
import json
import os

import openvino as ov
import pytest
import torch
from optimum.intel import OVModelForCausalLM
from testing_utils import make_text, run_optimum_cli, write_jsonl

from optimum_multipruner import MultiPruner, get_adapter
from optimum_multipruner.exporters import export_openvino
from optimum_multipruner.modeling import to_pruned_model
from optimum_multipruner.nll import token_kl
from optimum_multipruner.record import RECORD_NAME, PruningRecord
from optimum_multipruner.recovery import RecoveryConfig, recover
from optimum_multipruner.recovery.quantization import fake_quantize, is_fake_quantized
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import apply_structure, dense_parameter_count

STRUCTURE = PrunedStructure(num_attention_heads=[4, 2, 4, 0], num_key_value_heads=[2, 1, 2, 0],
                            intermediate_size=[128, 256, 0, 64])
# The IR holds the trained int4 values; NNCF's decompressors keep scales and zero points in fp16, which moves logits by
# up to ~1% of their largest magnitude (measured: max |delta| 0.031 on logits up to 4.3, mean 0.003). A wrong group
# size, scale or adapter moves them by 10-100%.
IR_MAX_RELATIVE, IR_MEAN_RELATIVE = 0.02, 0.003


@pytest.fixture(scope="module")
def training_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qat") / "train.jsonl"
    return write_jsonl(path, make_text(400, seed=5))


def pruned_copy(teacher):
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    apply_structure(student, adapter, STRUCTURE)
    return to_pruned_model(student, adapter, STRUCTURE)


def config(training_file, **overrides):
    values = dict(dataset=training_file, max_tokens=16 * 32, sequence_length=32, learning_rate=1e-2, warmup_steps=0,
                  per_device_train_batch_size=2, save_steps=0, logging_steps=2, quantization="int4",
                  quantization_group_size=16, quantization_lora_rank=4, quantization_scale_learning_rate=1e-3)
    values.update(overrides)
    return RecoveryConfig(**values)


def held_out(tokenizer):
    return tokenizer("\n\n".join(make_text(40, seed=11)), return_tensors="pt").input_ids[:, :256].view(-1, 64)


def mean_kl(student, teacher, sequences) -> float:
    with torch.no_grad():
        return token_kl(student(input_ids=sequences).logits, teacher(input_ids=sequences).logits).mean().item()


def test_int4_distillation_learns_and_exports_the_trained_int4_weights(teacher, tokenizer, training_file, tmp_path):
    sequences = held_out(tokenizer)
    untrained = fake_quantize(pruned_copy(teacher), config(training_file),
                              tokenizer("\n\n".join(make_text(30, seed=5)), return_tensors="pt").input_ids[:, :128]
                              .view(-1, 32))
    student = pruned_copy(teacher)
    report = recover(student, config(training_file), teacher, tokenizer)
    assert is_fake_quantized(student)
    assert report["config"]["quantization"] == "int4"
    assert mean_kl(student, teacher, sequences) < 0.9 * mean_kl(untrained, teacher, sequences)
    with torch.no_grad():
        fake_quantized = student(input_ids=sequences).logits

    ir = export_openvino(student, tmp_path / "ir", tokenizer=tokenizer, convert_tokenizer=False)
    constants = {str(op.get_output_element_type(0)) for op in ov.Core().read_model(os.path.join(ir, "openvino_model.xml"))
                 .get_ops() if op.get_type_name() == "Constant"}
    assert "<Type: 'uint4_t'>" in constants
    model = OVModelForCausalLM.from_pretrained(ir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    actual = model(input_ids=sequences, attention_mask=torch.ones_like(sequences)).logits
    scale = fake_quantized.abs().max().item()
    assert (actual - fake_quantized).abs().max().item() < IR_MAX_RELATIVE * scale
    assert (actual - fake_quantized).abs().mean().item() < IR_MEAN_RELATIVE * scale


def test_a_quantization_aware_run_resumes_to_the_uninterrupted_bytes(teacher, tokenizer, training_file, tmp_path):
    class Stop(Exception):
        pass

    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise Stop

    whole = pruned_copy(teacher)
    recover(whole, config(training_file, save_steps=2), teacher, tokenizer, checkpoint_dir=tmp_path / "a")
    interrupted = pruned_copy(teacher)
    with pytest.raises(Stop):
        recover(interrupted, config(training_file, save_steps=2), teacher, tokenizer, checkpoint_dir=tmp_path / "b",
                callbacks=[StopAt()])
    resumed = pruned_copy(teacher)
    recover(resumed, config(training_file, save_steps=2), teacher, tokenizer, checkpoint_dir=tmp_path / "b",
            resume=True)
    expected, actual = whole.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_quantization_aware_settings_and_saving_are_checked(teacher, tokenizer, training_file, tmp_path):
    with pytest.raises(ValueError, match="leave `method` at 'full'"):
        config(training_file, method="lora")
    with pytest.raises(ValueError, match="quantization"):
        config(training_file, quantization="int3")
    with pytest.raises(ValueError, match=r"does not divide the input width of .* layers \(e\.g\. model\.layers\.0"):
        recover(pruned_copy(teacher), config(training_file, quantization_group_size=48), teacher, tokenizer)
    student = pruned_copy(teacher)
    record = PruningRecord(model_type=get_adapter(student).model_type, num_hidden_layers=4,
                           dense_parameters=dense_parameter_count(student.config, get_adapter(student)),
                           structure=STRUCTURE, weight_reorder=False, source="tests")
    pruner = MultiPruner(student, tokenizer)
    pruner.record = record
    pruner.recover(config(training_file, max_tokens=4 * 32), teacher)
    with pytest.raises(ValueError, match="only an OpenVINO IR holds"):
        pruner.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
    with pytest.raises(ValueError, match="exports as they are"):
        export_openvino(pruner.model, tmp_path / "ir8", weight_format="int8", tokenizer=tokenizer)
    assert not (tmp_path / "ir8").exists()  # the int4 IR and its record: the CLI test


def test_the_dense_model_may_learn_its_own_int4_weights(teacher, tokenizer, training_file):
    """The fair baseline of a pruned int4 model: the dense model with the same quantization-aware distillation; here
    from the round-to-nearest start, which NNCF also traces on data (a run that passed none failed at once)."""
    pruner = MultiPruner(copy.deepcopy(teacher), tokenizer)
    pruner.recover(config(training_file, max_tokens=4 * 32, quantization_init="rtn"), teacher)
    assert is_fake_quantized(pruner.model) and pruner.recovery_config.quantization_init == "rtn"
    with pytest.raises(ValueError, match="this one is dense"):
        MultiPruner(copy.deepcopy(teacher), tokenizer).recover(config(training_file, quantization=None), teacher)


def test_cli_recover_to_int4_writes_the_ir_and_mixes_sources(teacher, tokenizer, training_file, tmp_path, capsys):
    student = pruned_copy(teacher)
    record = PruningRecord(model_type=get_adapter(student).model_type, num_hidden_layers=4,
                           dense_parameters=dense_parameter_count(student.config, get_adapter(student)),
                           structure=STRUCTURE, weight_reorder=False, source="tests")
    for folder, model in (("pruned", student), ("dense", teacher)):
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    record.save(tmp_path / "pruned")
    second = tmp_path / "second.jsonl"
    write_jsonl(second, make_text(100, seed=6))
    run_optimum_cli("multipruner", "recover", "-m", str(tmp_path / "pruned"), "--teacher", str(tmp_path / "dense"),
                    "--dataset", f"{training_file},{second}", "--dataset-weights", "3,1", "--max-tokens", "256",
                    "--sequence-length", "32", "--weight-format", "int4", "--group-size", "16",
                    "--quantization-lora-rank", "4", str(tmp_path / "ir"))
    assert "an int4 OpenVINO IR in" in capsys.readouterr().out
    assert (tmp_path / "ir" / "openvino_model.xml").is_file()
    recovery = json.loads((tmp_path / "ir" / RECORD_NAME).read_text(encoding="utf-8"))["recovery"]
    assert recovery["config"]["quantization"] == "int4" and recovery["config"]["quantization_group_size"] == 16
    assert [source["sequences"] for source in recovery["data"]] == [6, 2]
    card = (tmp_path / "ir" / "README.md").read_text(encoding="utf-8")
    assert "`train.jsonl` (192 tokens, 1 passes), `second.jsonl` (64 tokens, 1 passes)" in card
    assert "* weights: int4, learned with the teacher (quantization-aware, group size 16)" in card
