"""The distillation loss's terms: the hidden-state term is wired (it pulls the student's final hidden state toward
the teacher's beyond what the logit loss alone does)."""

import copy

import pytest
import torch
from testing_utils import make_text, write_jsonl

from optimum_multipruner import get_adapter
from optimum_multipruner.modeling import to_pruned_model
from optimum_multipruner.recovery import RecoveryConfig, recover
from optimum_multipruner.recovery.distillation import hidden_state_loss
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import apply_structure

STRUCTURE = PrunedStructure(num_attention_heads=[4, 2, 4, 0], num_key_value_heads=[2, 1, 2, 0],
                            intermediate_size=[128, 256, 0, 64])


def test_hidden_state_loss_is_one_minus_the_cosine_per_position():
    hidden = torch.randn(2, 5, 8)
    assert hidden_state_loss(hidden, hidden).abs().item() < 1e-5
    assert hidden_state_loss(hidden, -3 * hidden).item() == pytest.approx(2 * 10, rel=1e-5)
    assert hidden_state_loss(hidden, 2 * hidden).abs().item() < 1e-5  # the scale does not count


def final_hidden(model, sequences):
    captured = []
    handle = get_adapter(model).final_norm(model).register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        model(input_ids=sequences)
    handle.remove()
    return captured[0]


def test_the_hidden_state_term_pulls_the_final_hidden_state_to_the_teachers(trained_model, tokenizer, tmp_path):
    teacher = trained_model("llama")
    training_file = tmp_path / "train.jsonl"
    write_jsonl(training_file, make_text(300, seed=5))
    held_out = tokenizer("\n\n".join(make_text(40, seed=11)), return_tensors="pt").input_ids[:, :256].view(-1, 64)
    distances = {}
    for weight in (0.0, 20.0):
        student = copy.deepcopy(teacher)
        adapter = get_adapter(student)
        apply_structure(student, adapter, STRUCTURE)
        student = to_pruned_model(student, adapter, STRUCTURE)
        config = RecoveryConfig(dataset=str(training_file), max_tokens=24 * 32, sequence_length=32, learning_rate=2e-3,
                                warmup_steps=2, per_device_train_batch_size=2, save_steps=0, hidden_state_weight=weight)
        recover(student, config, teacher, tokenizer)
        distances[weight] = hidden_state_loss(final_hidden(student, held_out), final_hidden(teacher, held_out)).item()
    assert distances[20.0] < 0.8 * distances[0.0], distances
