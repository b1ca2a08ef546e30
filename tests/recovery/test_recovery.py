"""Recovery by distillation on tiny models: the loss is wired (held-out KL drops), LoRA merges into the pruned shapes,
the result reloads and exports, an interrupted run resumes to the same bytes, and bad input is refused before any
training step."""

import copy
import json
import os
import shutil

import pytest
import torch
from testing_utils import make_model, make_text, run_optimum_cli, write_jsonl
from transformers import AutoModelForCausalLM, TrainerCallback

import optimum_multipruner  # noqa: F401  (registers the pruned model types)
from optimum_multipruner import MultiPruner, get_adapter
from optimum_multipruner.modeling import to_pruned_model
from optimum_multipruner.nll import token_kl
from optimum_multipruner.record import RECORD_NAME, PruningRecord
from optimum_multipruner.recovery import RECOVERY_CONFIG_NAME, RecoveryConfig, last_complete_checkpoint, recover
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import apply_structure, dense_parameter_count

# layer 0 without attention, layer 1 without MLP, uneven KV heads and MLP widths
STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[128, 0, 256, 64]
)
SEQUENCE_LENGTH = 32


def pruned_copy(teacher, structure=STRUCTURE):
    """The teacher's weights, physically pruned to `structure`, with its pruning record."""
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    apply_structure(student, adapter, structure)
    student = to_pruned_model(student, adapter, structure)
    record = PruningRecord(model_type=adapter.model_type, num_hidden_layers=student.config.num_hidden_layers,
                           dense_parameters=dense_parameter_count(student.config, adapter), structure=structure,
                           weight_reorder=False, source="tests/recovery")
    return student, record


def config(training_file, **overrides):
    values = dict(dataset=training_file, max_tokens=40 * SEQUENCE_LENGTH, sequence_length=SEQUENCE_LENGTH,
                  learning_rate=2e-3, warmup_steps=2, per_device_train_batch_size=2, save_steps=0, logging_steps=2)
    values.update(overrides)
    return RecoveryConfig(**values)


@pytest.fixture(scope="module")
def training_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recovery") / "train.jsonl"
    return write_jsonl(path, make_text(600, seed=5))


@pytest.fixture(scope="module")
def held_out(tokenizer):
    ids = tokenizer("\n\n".join(make_text(80, seed=11)), return_tensors="pt").input_ids[0]
    return ids[: len(ids) // 64 * 64].view(-1, 64)  # text the recovery never sees


def mean_nll(model, sequences) -> float:
    with torch.no_grad():
        return model(input_ids=sequences, labels=sequences).loss.item()


def mean_kl(student, teacher, sequences) -> float:
    with torch.no_grad():
        return token_kl(student(input_ids=sequences).logits, teacher(input_ids=sequences).logits).mean().item()


def test_recovery_lowers_the_kl_to_the_teacher_on_held_out_text(teacher, tokenizer, training_file, held_out, tmp_path,
                                                                 monkeypatch):
    student, _ = pruned_copy(teacher)
    before = mean_kl(student, teacher, held_out)
    monkeypatch.chdir(tmp_path)
    report = recover(student, config(training_file), teacher, tokenizer)
    assert os.listdir(tmp_path) == []  # a run without checkpoints leaves no Trainer output folder behind
    after = mean_kl(student, teacher, held_out)
    assert after < 0.6 * before, (before, after)  # measured: about 0.25x; a loss that is not wired leaves it as is
    assert report["tokens_seen"] == 40 * SEQUENCE_LENGTH
    assert report["steps"] == 20
    assert [point["step"] for point in report["loss_curve"]] == list(range(2, 21, 2))
    assert report["loss_curve"][-1]["loss"] < report["loss_curve"][0]["loss"]
    assert not student.training


def test_bf16_mixed_precision_trains_without_an_accelerator(teacher, tokenizer, training_file, held_out):
    # on a CPU-only machine `TrainingArguments(bf16=True)` alone asks for a GPU; recovery runs CPU autocast instead
    student, _ = pruned_copy(teacher)
    before = mean_kl(student, teacher, held_out)
    output_dtypes = set()
    handle = student.lm_head.register_forward_hook(lambda module, args, output: output_dtypes.add(output.dtype))
    try:
        report = recover(student, config(training_file, bf16=True), teacher, tokenizer)
    finally:
        handle.remove()
    assert output_dtypes == {torch.bfloat16}  # every training forward ran under bf16 autocast
    assert mean_kl(student, teacher, held_out) < 0.6 * before
    assert report["loss_curve"][-1]["loss"] < report["loss_curve"][0]["loss"]
    assert {parameter.dtype for parameter in student.parameters()} == {torch.float32}  # mixed: weights stay fp32


def test_cross_entropy_only_trains_without_the_teacher_logits(teacher, tokenizer, training_file, held_out):
    student, _ = pruned_copy(teacher)
    teacher_calls = []
    handle = teacher.register_forward_pre_hook(lambda module, args: teacher_calls.append(1))
    before = mean_nll(student, held_out)
    try:
        report = recover(student, config(training_file, distillation_weight=0.0), teacher, tokenizer)
    finally:
        handle.remove()
    assert teacher_calls == []  # no teacher forward at all
    assert report["loss_curve"][-1]["loss"] < report["loss_curve"][0]["loss"]
    assert mean_nll(student, held_out) < before  # the loss it trained on is the next-token cross-entropy


class _LogitsAtTrainEnd(TrainerCallback):
    """The logits of `Trainer`'s model (the PEFT model, adapters not yet merged) on `sequences` once training ends."""

    def __init__(self, sequences: torch.Tensor) -> None:
        self.sequences = sequences
        self.logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            self.logits = model.eval()(input_ids=self.sequences).logits


def test_lora_recovery_merges_to_the_trained_adapters_logits(teacher, tokenizer, training_file, held_out):
    student, _ = pruned_copy(teacher)
    with torch.no_grad():
        start = student(input_ids=held_out[:2]).logits
    adapters = _LogitsAtTrainEnd(held_out[:2])
    recover(student, config(training_file, method="lora", lora_rank=4, learning_rate=5e-3,
                            max_tokens=8 * SEQUENCE_LENGTH), teacher, tokenizer, callbacks=[adapters])
    assert not torch.allclose(adapters.logits, start, atol=1e-3)  # the adapters trained
    with torch.no_grad():
        merged = student(input_ids=held_out[:2]).logits
    torch.testing.assert_close(merged, adapters.logits, atol=1e-5, rtol=1e-5)  # merge = adapters, up to float sums


def test_lora_config_reaches_peft(teacher, tokenizer, training_file):
    student, _ = pruned_copy(teacher)
    seen = {}

    class _Adapters(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.update(model.peft_config["default"].to_dict())

    recover(student, config(training_file, method="lora", lora_rank=4, lora_config={"use_rslora": True, "r": 2}),
            teacher, tokenizer, callbacks=[_Adapters()])
    assert seen["use_rslora"] is True and seen["r"] == 2  # the pass-through overrides lora_rank


def test_recovered_checkpoint_reloads_exports_and_records_the_run(teacher, tokenizer, training_file, held_out,
                                                                  tmp_path):
    from optimum.intel import OVModelForCausalLM

    from optimum_multipruner.exporters import export_openvino

    student, record = pruned_copy(teacher)
    pruner = MultiPruner(student, tokenizer)
    pruner.record = record
    pruner.recover(config(training_file, max_tokens=8 * SEQUENCE_LENGTH), teacher=teacher)
    pruner.save_pretrained(tmp_path / "recovered")

    saved = PruningRecord.load(tmp_path / "recovered")
    assert saved.recovery["tokens_seen"] == 8 * SEQUENCE_LENGTH and len(saved.recovery["data_sha256"]) == 64
    assert RecoveryConfig.from_pretrained(tmp_path / "recovered") == pruner.recovery_config
    card = (tmp_path / "recovered" / "README.md").read_text(encoding="utf-8")
    assert "## Recovery" in card and f"{8 * SEQUENCE_LENGTH:,}" in card  # the model card says it was recovered
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "recovered", attn_implementation="eager")
    with torch.no_grad():
        expected = student(input_ids=held_out[:2]).logits
        torch.testing.assert_close(reloaded(input_ids=held_out[:2]).logits, expected, atol=0, rtol=0)

    export_openvino(str(tmp_path / "recovered"), tmp_path / "ir", weight_format="fp32", convert_tokenizer=False)
    with open(tmp_path / "ir" / RECORD_NAME, encoding="utf-8") as handle:
        assert json.load(handle)["recovery"] == saved.recovery  # the IR says how it was made
    ir = OVModelForCausalLM.from_pretrained(tmp_path / "ir", ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    ov_logits = torch.as_tensor(ir(input_ids=held_out[:2], attention_mask=torch.ones_like(held_out[:2])).logits)
    torch.testing.assert_close(ov_logits, expected, atol=1e-4, rtol=0)


class _KillAt(TrainerCallback):
    """Raises at the start of optimizer step `step` + 1, as a kill between two steps would stop the run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_checkpoints_of_earlier_versions_without_marks_count_by_trainers_state_file(tmp_path):
    for step, files in ((2, ("model.safetensors", "trainer_state.json")), (4, ("model.safetensors",))):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        for name in files:
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-2")


def test_resume_reaches_the_uninterrupted_weights(teacher, tokenizer, training_file, tmp_path):
    settings = dict(max_tokens=12 * SEQUENCE_LENGTH, save_steps=2, learning_rate=1e-3,
                    lr_scheduler_type="linear", training_args={"use_cpu": True})
    whole, _ = pruned_copy(teacher)
    recover(whole, config(training_file, **settings), teacher, tokenizer, checkpoint_dir=tmp_path / "whole")

    interrupted, _ = pruned_copy(teacher)
    with pytest.raises(KeyboardInterrupt):
        recover(interrupted, config(training_file, **settings), teacher, tokenizer, checkpoint_dir=tmp_path / "run",
                callbacks=[_KillAt(3)])
    assert last_complete_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    # a checkpoint the kill left half-written is not used, even holding every file Trainer writes (no mark yet)
    shutil.copytree(tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4",
                    ignore=shutil.ignore_patterns("multipruner_checkpoint_complete.json"))
    assert last_complete_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    with pytest.raises(FileExistsError, match="already holds a recovery run"):
        recover(pruned_copy(teacher)[0], config(training_file, **settings), teacher, tokenizer,
                checkpoint_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"differs from the interrupted run's in \['learning_rate'\]"):
        recover(pruned_copy(teacher)[0], config(training_file, **{**settings, "learning_rate": 2e-3}), teacher,
                tokenizer, checkpoint_dir=tmp_path / "run", resume=True)

    resumed, _ = pruned_copy(teacher)
    report = recover(resumed, config(training_file, **settings), teacher, tokenizer, checkpoint_dir=tmp_path / "run",
                     resume=True)
    assert report["steps"] == 6
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


class _LearningRates(TrainerCallback):
    def __init__(self) -> None:
        self.rates = []

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):  # the rate this step uses
        self.rates.append(lr_scheduler.get_last_lr()[0])


def test_warmup_stable_decay_holds_the_rate_then_decays_over_the_last_fifth(teacher, tokenizer, training_file):
    # transformers' WSD schedule cannot run without its decay length: recovery gives it the last 20% of the steps
    rates = _LearningRates()
    recover(pruned_copy(teacher)[0], config(training_file, lr_scheduler_type="warmup_stable_decay"), teacher,
            tokenizer, callbacks=[rates])
    assert len(rates.rates) == 20  # 40 sequences, 2 a step
    peak = config(training_file).learning_rate
    assert rates.rates[:2] == [0.0, pytest.approx(peak / 2)]  # warm-up of 2 steps
    assert rates.rates[2:17] == [pytest.approx(peak)] * 15  # stable
    decay = rates.rates[16:]  # cosine over the last 4 steps (20%), to 0 as the run ends
    assert all(later < earlier for earlier, later in zip(decay, decay[1:])) and decay[-1] < 0.3 * peak


def test_a_length_free_schedule_extends_to_a_larger_budget(teacher, tokenizer, training_file, tmp_path):
    settings = dict(save_steps=2, learning_rate=1e-3, training_args={"use_cpu": True})
    whole, _ = pruned_copy(teacher)
    recover(whole, config(training_file, max_tokens=8 * SEQUENCE_LENGTH, **settings), teacher, tokenizer)
    short, _ = pruned_copy(teacher)
    recover(short, config(training_file, max_tokens=4 * SEQUENCE_LENGTH, **settings), teacher, tokenizer,
            checkpoint_dir=tmp_path / "run")
    extended, _ = pruned_copy(teacher)
    recover(extended, config(training_file, max_tokens=8 * SEQUENCE_LENGTH, **settings), teacher, tokenizer,
            checkpoint_dir=tmp_path / "run", resume=True)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(extended.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="a resumed run can only keep or extend it"):
        recover(pruned_copy(teacher)[0], config(training_file, max_tokens=4 * SEQUENCE_LENGTH, **settings), teacher,
                tokenizer, checkpoint_dir=tmp_path / "run", resume=True)


# ----------------------------------------------------------------------------------------------------- bad input
class _NoTrainingStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise AssertionError("a training step ran")


@pytest.mark.parametrize("case, error, match", [
    ("vocabulary", ValueError, r"vocabulary \(300 tokens\) differs from the student's \(320\)"),
    ("family", ValueError, "The teacher is a qwen2 model, but the student is a pruned llama model"),
    ("depth", ValueError, "num_hidden_layers .* not a pruned copy of this teacher"),
    ("empty data", ValueError, r"The training file \S+ is empty"),
    ("blank data", ValueError, r"The training file \S+ holds no text \(only blank lines\)"),
    ("sequence length", ValueError, r"`sequence_length` 4096 exceeds the model's \d+ positions"),
    ("float16", ValueError, "does not train float16 weights"),
    ("short data", ValueError, "fewer than the 1280 the run needs"),
    ("lora targets", ValueError, r"LoRA target modules \['qkv_proj'\] match no linear layer"),
    ("no teacher", ValueError, "Recovery needs a teacher"),
    ("training_args", ValueError, r"`training_args` does not make a valid TrainingArguments: .*no_such_argument"),
    ("lora_config", ValueError, r"`lora_config` does not make a valid LoraConfig: .*no_such_field"),
    ("polynomial", ValueError, r"The polynomial schedule decays to lr_end 1e-07; `learning_rate` 1e-08 must be larger"),
])
def test_bad_input_is_refused_before_training(case, error, match, teacher, tokenizer, training_file, tmp_path):
    student, _ = pruned_copy(teacher)
    settings, other_teacher = {}, teacher
    if case == "vocabulary":
        other_teacher = make_model("llama", vocab_size=300)
    elif case == "family":
        other_teacher = make_model("qwen2")
    elif case == "depth":
        other_teacher = make_model("llama", num_hidden_layers=2)
    elif case in ("empty data", "short data"):
        path = tmp_path / "train.txt"
        path.write_text("" if case == "empty data" else "\n".join(make_text(5)), encoding="utf-8")
        settings["dataset"] = str(path)
    elif case == "blank data":
        path = tmp_path / "train.jsonl"
        path.write_text("\n \n\n", encoding="utf-8")
        settings["dataset"] = str(path)
    elif case == "sequence length":
        settings["sequence_length"] = 4096
    elif case == "float16":
        student.half()
    elif case == "lora targets":
        settings.update(method="lora", lora_target_modules=["q_proj", "qkv_proj"])
    elif case == "no teacher":
        other_teacher = None
    elif case == "training_args":
        settings["training_args"] = {"no_such_argument": 1}
    elif case == "lora_config":
        settings.update(method="lora", lora_config={"no_such_field": 1})
    elif case == "polynomial":  # transformers would raise only once training starts, after the run file is written
        settings.update(lr_scheduler_type="polynomial", learning_rate=1e-8)
    start = copy.deepcopy(student.state_dict())
    with pytest.raises(error, match=match):
        recover(student, config(training_file, **settings), other_teacher, tokenizer, callbacks=[_NoTrainingStep()])
    for name, tensor in student.state_dict().items():
        assert torch.equal(start[name], tensor)


def test_a_student_as_large_as_the_teacher_is_refused(teacher, tokenizer, training_file):
    with pytest.raises(ValueError, match="not smaller than the teacher"):
        recover(copy.deepcopy(teacher), config(training_file), teacher, tokenizer)
    with pytest.raises(ValueError, match="this one is dense"):
        MultiPruner(copy.deepcopy(teacher), tokenizer).recover(config(training_file), teacher=teacher)


def test_cli_recover_refuses_an_existing_output_and_writes_a_recovered_checkpoint(teacher, tokenizer, training_file,
                                                                                    tmp_path, capsys):
    student, record = pruned_copy(teacher)
    student.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    record.save(tmp_path / "pruned")
    teacher.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me", encoding="utf-8")
    options = ["multipruner", "recover", "-m", str(tmp_path / "pruned"), "--teacher", str(tmp_path / "dense"),
               "--dataset", training_file, "--max-tokens", str(4 * SEQUENCE_LENGTH), "--sequence-length",
               str(SEQUENCE_LENGTH), str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        run_optimum_cli(*options)
    assert exit_info.value.code == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "mine.txt").read_text(encoding="utf-8") == "keep me"

    run_optimum_cli(*options, "--overwrite", "--method", "lora", "--lora-target-modules", "q_proj,v_proj")
    assert "Recovered" in capsys.readouterr().out
    saved = RecoveryConfig.from_pretrained(tmp_path / "out" / RECOVERY_CONFIG_NAME)
    assert saved.method == "lora" and saved.lora_target_modules == ["q_proj", "v_proj"]
    run_optimum_cli("multipruner", "info", str(tmp_path / "out"))
    assert "recovered: lora distillation from" in capsys.readouterr().out


def test_torchrun_two_processes_give_the_single_process_result(teacher, tokenizer, training_file, tmp_path):
    """`torchrun --nproc-per-node 2 ... optimum-cli multipruner recover` (gloo, one sequence per rank) against one
    process with two sequences per step: the same global batches, so the same weights up to the order of float sums
    (DDP averages the ranks' gradients where one process sums two sequences': measured differences ~1e-7)."""
    import subprocess
    import sys

    student, record = pruned_copy(teacher)
    for folder, model in (("pruned", student), ("dense", teacher)):
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    record.save(tmp_path / "pruned")
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    options = ["-m", str(tmp_path / "pruned"), "--teacher", str(tmp_path / "dense"), "--dataset", training_file,
               "--max-tokens", str(8 * SEQUENCE_LENGTH), "--sequence-length", str(SEQUENCE_LENGTH),
               "--learning-rate", "1e-3", "--training-args", '{"use_cpu": true}']
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python", cli,
         "multipruner", "recover", *options, "--per-device-train-batch-size", "1", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Recovered ") == 1  # only rank 0 reports and writes
    run_optimum_cli("multipruner", "recover", *options, "--per-device-train-batch-size", "2", str(tmp_path / "one"))
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert PruningRecord.load(tmp_path / "two").recovery["tokens_seen"] == 8 * SEQUENCE_LENGTH
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").state_dict()
    assert any(not torch.allclose(start[name], tensor) for name, tensor in one.items())


def test_a_teacher_with_another_tokenizer_is_refused(teacher, tokenizer, tmp_path):
    from testing_utils import make_tokenizer

    from optimum_multipruner.recovery import check_teacher

    student, _ = pruned_copy(teacher)
    make_tokenizer(vocab_size=300).save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="differs from the student's: teacher and student must share one tokenizer"):
        check_teacher(student, teacher, tokenizer, str(tmp_path / "dense"))
    tokenizer.save_pretrained(tmp_path / "same")
    check_teacher(student, teacher, tokenizer, str(tmp_path / "same"))


# ----------------------------------------------------------------------------------- divergence, checkpoints, teacher
def test_a_diverging_run_stops_keeps_the_last_good_checkpoint_and_nothing_saves_it(teacher, tokenizer, training_file,
                                                                                     tmp_path):
    from optimum_multipruner.exporters import export_gguf, export_openvino
    from optimum_multipruner.recovery.checks import RecoveryDivergedError

    student, record = pruned_copy(teacher)
    pruner = MultiPruner(student, tokenizer)
    pruner.record = record
    settings = dict(learning_rate=1e6, warmup_steps=0, max_tokens=8 * SEQUENCE_LENGTH, save_steps=1, logging_steps=1)
    with pytest.raises(RecoveryDivergedError, match=r"diverged at step 2: .* holds NaN .*learning rate too high"):
        pruner.recover(config(training_file, **settings), teacher=teacher, checkpoint_dir=tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-1", "recovery_run.json"]  # the NaN step is not saved
    good = AutoModelForCausalLM.from_pretrained(last_complete_checkpoint(tmp_path / "run"))
    assert all(torch.isfinite(tensor).all() for tensor in good.state_dict().values())
    assert pruner.record.recovery is None  # the failed run is not recorded
    for write in (lambda: pruner.save_pretrained(tmp_path / "out"),
                  lambda: export_gguf(student, tmp_path / "out.gguf", tokenizer=tokenizer),
                  lambda: export_openvino(student, tmp_path / "ir", tokenizer=tokenizer)):
        with pytest.raises(ValueError, match="weights are not finite"):
            write()
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_fresh_run_never_adopts_or_deletes_checkpoints_it_did_not_write(teacher, tokenizer, training_file,
                                                                          tmp_path):
    foreign = tmp_path / "run" / "checkpoint-5"
    foreign.mkdir(parents=True)
    (foreign / "trainer_state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileExistsError, match="is not empty and holds no recovery run"):
        recover(pruned_copy(teacher)[0], config(training_file, save_steps=1), teacher, tokenizer,
                checkpoint_dir=tmp_path / "run", callbacks=[_NoTrainingStep()])
    assert os.listdir(tmp_path / "run") == ["checkpoint-5"]


def test_resume_compares_the_teachers_weights_not_its_path(teacher, tokenizer, training_file, tmp_path):
    teacher.save_pretrained(tmp_path / "dense")
    settings = dict(max_tokens=8 * SEQUENCE_LENGTH, save_steps=2, training_args={"use_cpu": True})
    with pytest.raises(KeyboardInterrupt):
        recover(pruned_copy(teacher)[0], config(training_file, teacher=str(tmp_path / "dense"), **settings), None,
                tokenizer, checkpoint_dir=tmp_path / "run", callbacks=[_KillAt(3)])
    other = make_model("llama", seed=7)  # the same folder name given, other weights in it
    with pytest.raises(ValueError, match="the teacher's weights differ"):
        recover(pruned_copy(teacher)[0], config(training_file, teacher=str(tmp_path / "dense"), **settings), other,
                tokenizer, checkpoint_dir=tmp_path / "run", resume=True)
    os.rename(tmp_path / "dense", tmp_path / "moved")  # the same weights under another path
    report = recover(pruned_copy(teacher)[0], config(training_file, teacher=str(tmp_path / "moved") + "/", **settings),
                     None, tokenizer, checkpoint_dir=tmp_path / "run", resume=True)
    assert report["steps"] == 4


def test_lora_runs_reproduce_and_resume_to_the_uninterrupted_bytes(teacher, tokenizer, training_file, tmp_path):
    settings = dict(method="lora", lora_rank=4, learning_rate=5e-3, max_tokens=8 * SEQUENCE_LENGTH, save_steps=2,
                    training_args={"use_cpu": True})
    runs = []
    for name in ("first", "second"):
        student, _ = pruned_copy(teacher)
        torch.manual_seed(len(runs))  # whatever the global generator holds, the adapters start from `seed`
        recover(student, config(training_file, **settings), teacher, tokenizer)
        runs.append(student.state_dict())
    interrupted = pruned_copy(teacher)[0]
    with pytest.raises(KeyboardInterrupt):
        recover(interrupted, config(training_file, **settings), teacher, tokenizer, checkpoint_dir=tmp_path / "run",
                callbacks=[_KillAt(3)])
    resumed, _ = pruned_copy(teacher)
    recover(resumed, config(training_file, **settings), teacher, tokenizer, checkpoint_dir=tmp_path / "run",
            resume=True)
    runs.append(resumed.state_dict())
    start = pruned_copy(teacher)[0].state_dict()
    assert any(not torch.equal(start[name], tensor) for name, tensor in runs[0].items())  # the adapters trained
    for name, tensor in runs[0].items():
        assert torch.equal(runs[1][name], tensor) and torch.equal(runs[2][name], tensor), name


def test_the_report_counts_the_tokens_trainer_ran_and_use_cache_is_restored(teacher, tokenizer, training_file):
    student, _ = pruned_copy(teacher)
    assert student.config.use_cache
    report = recover(student, config(training_file, max_tokens=16 * SEQUENCE_LENGTH,
                                     training_args={"per_device_train_batch_size": 4}), teacher, tokenizer)
    assert report["steps"] == 4 and report["tokens_seen"] == 16 * SEQUENCE_LENGTH  # 4 steps of 4 sequences
    assert report["loss_curve"][-1]["tokens"] == 16 * SEQUENCE_LENGTH
    assert student.config.use_cache  # Trainer turns it off for training; the saved config.json keeps the model's


def test_cli_refuses_checkpoint_and_output_folders_that_hold_what_the_run_reads_or_writes(teacher, tokenizer,
                                                                                           training_file, tmp_path,
                                                                                           capsys):
    student, record = pruned_copy(teacher)
    student.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    teacher.save_pretrained(tmp_path / "dense")
    (tmp_path / "pruned" / "mine.txt").write_text("keep me", encoding="utf-8")
    files = sorted(os.listdir(tmp_path / "pruned"))
    options = ["multipruner", "recover", "-m", str(tmp_path / "pruned"), "--teacher", str(tmp_path / "dense"),
               "--dataset", training_file, "--max-tokens", str(4 * SEQUENCE_LENGTH), "--sequence-length",
               str(SEQUENCE_LENGTH)]
    for extra, message in (
        ([str(tmp_path / "pruned"), "--overwrite"], "is the pruned model's folder, which the run reads"),
        ([str(tmp_path / "dense") + "/", "--overwrite"], "is the teacher's folder, which the run reads"),
        ([str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "out" / "ckpt")], "is inside the output"),
        ([str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "pruned")], "inside the pruned model's folder"),
        ([str(tmp_path / "out"), "--learning-rate", "1e6", "--warmup-steps", "0"], "Recovery diverged at step"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_optimum_cli(*options, *extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path / "pruned")) == files
    assert not (tmp_path / "out").exists()
