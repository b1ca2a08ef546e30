"""The recovery checks on their own: the teacher's fingerprint follows its weights, not its path, and a teacher that
is not the student's dense origin is flagged."""

import copy
import logging

import torch
from testing_utils import make_model
from torch import nn

from optimum_multipruner import get_adapter
from optimum_multipruner.modeling import to_pruned_model
from optimum_multipruner.recovery.checks import teacher_fingerprint, warn_unless_teacher_is_origin
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import apply_structure

STRUCTURE = PrunedStructure(num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1],
                            intermediate_size=[128, 0, 256, 64])


def test_the_fingerprint_follows_the_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = make_model("llama")
    teacher.save_pretrained(tmp_path / "dense")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dense") + "/")
    assert teacher_fingerprint(reloaded) == teacher_fingerprint(teacher)
    nudged = copy.deepcopy(teacher)
    nudged.model.layers[2].mlp.down_proj.weight.data[-1, -1] += 1e-3  # the last value is always in the sample
    assert teacher_fingerprint(nudged) != teacher_fingerprint(teacher)
    assert teacher_fingerprint(make_model("llama", seed=1)) != teacher_fingerprint(teacher)


def test_a_teacher_that_is_not_the_students_origin_is_flagged(caplog):
    teacher = make_model("llama")
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    apply_structure(student, adapter, STRUCTURE)
    student = to_pruned_model(student, adapter, STRUCTURE)
    with caplog.at_level(logging.WARNING, logger="optimum_multipruner"):
        warn_unless_teacher_is_origin(student, teacher)
        assert caplog.records == []
        warn_unless_teacher_is_origin(student, make_model("llama", seed=3))  # same shapes, other weights
    assert "probably not the dense model the student was pruned from" in caplog.text


def test_the_teacher_fingerprint_samples_the_last_value_of_a_tensor_beyond_float_positions():
    """SmolLM2's embedding has 28,311,552 values: float-spaced sample positions rounded past its last (odd) index."""
    module = nn.Module()
    module.weight = nn.Parameter(torch.zeros(2**24 + 2))
    before = teacher_fingerprint(module)
    with torch.no_grad():
        module.weight[-1] = 1.0
    assert teacher_fingerprint(module) != before
