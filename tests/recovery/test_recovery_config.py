"""`RecoveryConfig`: validation, JSON round trip, what a resumed run may change."""

import pytest

from optimum_multipruner.recovery import RECOVERY_CONFIG_NAME, RecoveryConfig


def test_round_trip_through_json(tmp_path):
    config = RecoveryConfig(dataset="c4.jsonl", max_tokens=1000, method="lora", lora_target_modules=("q_proj",),
                            training_args={"optim": "adamw_torch"})
    assert config.lora_target_modules == ["q_proj"]
    path = config.save_pretrained(tmp_path)
    assert path.endswith(RECOVERY_CONFIG_NAME)
    assert RecoveryConfig.from_pretrained(tmp_path) == config
    assert RecoveryConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("field, value, match", [
    ("max_tokens", 0, "`max_tokens` must be a positive integer"),
    ("max_tokens", -5, "`max_tokens` must be a positive integer"),
    ("max_tokens", 1.5, "`max_tokens` must be a positive integer"),
    ("sequence_length", 1, "at least 2"),
    ("method", "qlora", "`method` must be one of"),
    ("learning_rate", 0.0, r"`learning_rate` must be a number in \(0.0, inf\)"),
    ("distillation_weight", 1.5, r"`distillation_weight` must be a number in \[0.0, 1.0\]"),
    ("temperature", float("nan"), "`temperature` must be a number"),
    ("lr_scheduler_type", "reduce_lr_on_plateau", "`lr_scheduler_type` must be one of"),
    ("lora_target_modules", [], "`lora_target_modules` must be"),
    ("dataset", " ", "`dataset` must name"),
    ("save_steps", -1, "`save_steps` must be a non-negative integer"),
])
def test_out_of_range_values_are_refused(field, value, match):
    values = dict(dataset="c4.jsonl", max_tokens=1000)
    values[field] = value
    with pytest.raises(ValueError, match=match):
        RecoveryConfig(**values)


def test_unknown_and_corrupted_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown RecoveryConfig field\(s\) \['epochs'\]"):
        RecoveryConfig.from_dict({"dataset": "c4.jsonl", "max_tokens": 10, "epochs": 3})
    (tmp_path / RECOVERY_CONFIG_NAME).write_text('{"dataset": "c4.jsonl", "max_', encoding="utf-8")
    with pytest.raises(ValueError, match="corrupted or truncated"):
        RecoveryConfig.from_pretrained(tmp_path)


def test_a_resumed_run_may_only_extend_a_length_free_schedule():
    saved = RecoveryConfig(dataset="c4.jsonl", max_tokens=1000)
    assert saved.resume_differences(RecoveryConfig(dataset="c4.jsonl", max_tokens=2000, teacher_device="cpu")) == []
    assert RecoveryConfig(dataset="c4.jsonl", max_tokens=1000, seed=1).resume_differences(saved) == ["seed"]
    cosine = RecoveryConfig(dataset="c4.jsonl", max_tokens=1000, lr_scheduler_type="cosine")
    longer = RecoveryConfig(dataset="c4.jsonl", max_tokens=2000, lr_scheduler_type="cosine")
    assert longer.resume_differences(cosine) == ["max_tokens (the schedule depends on the run's length)"]
