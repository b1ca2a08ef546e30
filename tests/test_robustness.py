"""Robustness: resuming a killed search, determinism across processes, safe saves, and the bad-input matrix."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testing_utils
import torch
from safetensors.torch import load_file
from testing_utils import make_model, make_text, make_tokenizer, run_optimum_cli
from torch import nn
from transformers import AutoModelForCausalLM

from optimum_multipruner import (
    FastSearchConfig,
    MultiPruner,
    MultiPrunerConfig,
    PrunedStructure,
    PruningRecord,
    count_parameters,
)
from optimum_multipruner.resume_state import PROGRESS_NAME, state_dict_hash
from optimum_multipruner.configuration import CONFIG_NAME
from optimum_multipruner.utils import check_output_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loads the dense model, tokenizer and configuration from disk, searches, and saves the result: argv = model dir,
# tokenizer dir, configuration file, output dir, then "-" or a checkpoint dir, then "-" or a resume dir.
SEARCH_SCRIPT = """
import sys
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from optimum_multipruner import MultiPruner, MultiPrunerConfig

model_dir, tokenizer_dir, config_file, out, checkpoint, resume = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
pruner = MultiPruner(model, PreTrainedTokenizerFast.from_pretrained(tokenizer_dir))
pruner.prune(MultiPrunerConfig.from_pretrained(config_file), progress=False,
             checkpoint_dir=None if checkpoint == "-" else checkpoint, resume_from=None if resume == "-" else resume)
pruner.save_pretrained(out)
"""


def search_config(calibration_file, **overrides):
    """Block, MLP and attention steps (five), small enough to run in seconds."""
    values = dict(
        pruning_distribution=(30, 60, 10),
        mlp_channel_group_size=32,
        num_calibration_samples_block=40,
        num_calibration_samples_width=40,
    )
    return testing_utils.search_config(calibration_file, **{**values, **overrides})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, calibration_file):
    """The dense model, tokenizer and configuration on disk."""
    root = tmp_path_factory.mktemp("inputs")
    make_model("llama").save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "tokenizer")
    search_config(calibration_file).save_pretrained(root)
    return root


def start_search(inputs, out, checkpoint="-", resume="-"):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    arguments = [inputs / "dense", inputs / "tokenizer", inputs / CONFIG_NAME, out, checkpoint, resume]
    return subprocess.Popen([sys.executable, "-c", SEARCH_SCRIPT, *map(str, arguments)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]


def progress_steps(checkpoint):
    try:
        return len(json.loads((checkpoint / PROGRESS_NAME).read_text())["record"]["steps"])
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """Two uninterrupted searches in separate processes, and one killed (SIGKILL) after its second step, then
    resumed in a fresh process."""
    root = tmp_path_factory.mktemp("runs")
    killed_checkpoint = root / "killed-checkpoint"
    first, second = start_search(inputs, root / "first"), start_search(inputs, root / "second")
    killed = start_search(inputs, root / "killed", checkpoint=killed_checkpoint)
    while progress_steps(killed_checkpoint) < 2:
        assert killed.poll() is None, "the search ended before it could be killed: " + killed.stderr.read()[-3000:]
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    steps_at_kill = progress_steps(killed_checkpoint)
    shutil.copytree(killed_checkpoint, root / "killed-progress")  # as the kill left it, for the refusal tests
    resumed = start_search(inputs, root / "resumed", resume=killed_checkpoint)
    for process in (first, second, resumed):
        finish(process)
    return root, steps_at_kill


def saved_result(directory):
    return load_file(directory / "model.safetensors"), PruningRecord.load(directory)


def test_same_inputs_give_identical_results_in_two_processes(runs):
    root, _ = runs
    first, second = root / "first", root / "second"
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "config.json").read_text() == (second / "config.json").read_text()
    record, other = PruningRecord.load(first), PruningRecord.load(second)
    assert record.steps == other.steps and len(record.steps) >= 5
    assert {step.stage for step in record.steps} == {"block", "mlp", "attention"}


def test_search_killed_mid_way_resumes_to_the_uninterrupted_result(runs):
    root, steps_at_kill = runs
    (weights, record), (resumed_weights, resumed_record) = saved_result(root / "first"), saved_result(root / "resumed")
    assert not (root / "killed").exists()
    assert 2 <= steps_at_kill < len(record.steps)  # really killed mid-way
    assert resumed_record.steps == record.steps
    assert resumed_record.start_perplexity == record.start_perplexity
    assert resumed_record.structure == record.structure and resumed_record.target_reached
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    progress = json.loads((root / "killed-checkpoint" / PROGRESS_NAME).read_text())
    assert PruningRecord.from_dict(progress["record"]).steps == record.steps
    as_killed = json.loads((root / "killed-progress" / PROGRESS_NAME).read_text())["record"]
    stage = as_killed["steps"][-1]["stage"]  # the work of its stage so far was on disk after every step
    assert as_killed["search_stats"][stage]["candidates_started"] >= len(as_killed["steps"])
    # The resumed stage counted on from the work saved before the kill: every candidate of every step (exact mode).
    for stage, stats in record.search_stats.items():
        assert resumed_record.search_stats[stage]["candidates_started"] == stats["candidates_started"]


def _dense(inputs):
    return AutoModelForCausalLM.from_pretrained(inputs / "dense", attn_implementation="eager")


@pytest.mark.parametrize(
    "change, message",
    [
        ("config", r"configuration differs .*\['seed'\]"),
        ("model", "weight hash mismatch"),
        ("data", "calibration token ids differ"),
        ("tokenizer", "calibration token ids differ"),
    ],
)
def test_resume_refuses_another_config_model_or_data(change, message, runs, inputs, tokenizer, calibration_file,
                                                     tmp_path):
    root, _ = runs
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(root / "killed-progress", checkpoint)
    config = search_config(calibration_file, seed=43 if change == "config" else 42)
    if change == "data":  # the calibration file was rewritten since the interruption: same path, other text
        other_file = tmp_path / "other.txt"
        other_file.write_text("\n".join(make_text(2000, seed=7)), encoding="utf-8")
        config = search_config(str(other_file))
        progress = json.loads((checkpoint / PROGRESS_NAME).read_text())
        progress["config"]["calibration_dataset"] = str(other_file)
        (checkpoint / PROGRESS_NAME).write_text(json.dumps(progress))
    stamp = (checkpoint / PROGRESS_NAME).read_bytes()
    model = make_model("llama", seed=1) if change == "model" else _dense(inputs)
    if change == "tokenizer":  # fewer BPE merges: the same text gets other ids, all within the model's vocabulary
        tokenizer = make_tokenizer(vocab_size=300)
    before = state_dict_hash(model)
    with pytest.raises(ValueError, match=message):
        MultiPruner(model, tokenizer).prune(config, progress=False, resume_from=checkpoint)
    assert state_dict_hash(model) == before and (checkpoint / PROGRESS_NAME).read_bytes() == stamp


def test_progress_written_before_a_config_field_existed_resumes_with_its_default(runs, inputs, tokenizer,
                                                                                    calibration_file, tmp_path):
    """A progress file from a version without `search_mode` / `importance_metric` resumes under their defaults (the
    behaviour that wrote it) and is refused under another value."""
    root, _ = runs
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(root / "killed-progress", checkpoint)
    progress = json.loads((checkpoint / PROGRESS_NAME).read_text())
    for name in ("search_mode", "importance_metric", "head_chunk_size"):
        del progress["config"][name]
    (checkpoint / PROGRESS_NAME).write_text(json.dumps(progress))
    with pytest.raises(ValueError, match=r"configuration differs .*\['importance_metric'\]"):
        MultiPruner(_dense(inputs), tokenizer).prune(search_config(calibration_file, importance_metric="kl"),
                                                     progress=False, resume_from=checkpoint)
    resumed = MultiPruner(_dense(inputs), tokenizer)
    resumed.prune(search_config(calibration_file), progress=False, resume_from=checkpoint)
    saved_steps = PruningRecord.from_dict(progress["record"]).steps
    assert resumed.record.steps[: len(saved_steps)] == saved_steps and resumed.record.target_reached


def flat_fast_search_keys(config):
    """A configuration as versions before `FastSearchConfig` wrote it: flat `fast_search_<name>` keys."""
    flat = {key: value for key, value in config.items() if key != "fast_search"}
    return {**flat, **{f"fast_search_{name}": value for name, value in config["fast_search"].items()}}


@pytest.mark.parametrize(
    "missing, refused, former",
    [  # before the screen; the first screen (the radius is not compared between searches without a screen); before
        # the tie rule
        (("fast_search_screen", "fast_search_screen_radius", "fast_search_tie_z"),
         ["fast_search.screen", "fast_search.screen_radius", "fast_search.tie_z"], dict(screen=None, tie_z=None)),
        (("fast_search_screen_radius", "fast_search_tie_z"), ["fast_search.screen_radius", "fast_search.tie_z"],
         dict(screen=0.25, screen_radius=0, tie_z=None)),
        (("fast_search_tie_z",), ["fast_search.tie_z"], dict(screen=0.25, tie_z=None)),
    ],
)
def test_fast_progress_written_before_a_fast_mode_field_existed_resumes_as_it_began(missing, refused, former, runs,
                                                                                    inputs, tokenizer,
                                                                                    calibration_file, tmp_path):
    """Fast progress of an older version (flat `fast_search_<name>` keys) without a fast-mode field resumes with the
    value that field's behaviour had before it existed (`progress.FORMER_VALUES`) and is refused under other values
    (the screen and tie rule that were once the defaults). Between exact searches it does not matter."""
    root, _ = runs
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(root / "killed-progress", checkpoint)
    progress = json.loads((checkpoint / PROGRESS_NAME).read_text())
    progress["config"] = flat_fast_search_keys(progress["config"])
    progress["record"]["config"] = flat_fast_search_keys(progress["record"]["config"])
    progress["config"]["fast_search_screen"] = 0.25  # a screened search, the fast mode's default then
    for name in missing:
        del progress["config"][name]
    progress["config"]["search_mode"] = "fast"  # as if the killed search had been a fast one
    (checkpoint / PROGRESS_NAME).write_text(json.dumps(progress))
    screened = dict(screen=0.25, screen_radius=1, tie_z=1.0)
    with pytest.raises(ValueError, match=r"configuration differs .*" + re.escape(str(refused))):
        MultiPruner(_dense(inputs), tokenizer).prune(
            search_config(calibration_file, search_mode="fast", fast_search=screened), progress=False,
            resume_from=checkpoint)
    resumed = MultiPruner(_dense(inputs), tokenizer)
    resumed.prune(search_config(calibration_file, search_mode="fast", fast_search=former), progress=False,
                  resume_from=checkpoint)
    assert not [key for key in resumed.record.to_dict()["config"] if key.startswith("fast_search_")]  # today's format
    assert resumed.record.config.fast_search == FastSearchConfig()
    exact = tmp_path / "exact"
    shutil.copytree(root / "killed-progress", exact)
    resumed = MultiPruner(_dense(inputs), tokenizer)
    resumed.prune(search_config(calibration_file, fast_search=dict(screen=None, keep=0.25)), progress=False,
                  resume_from=exact)
    assert resumed.record.target_reached


def test_checkpoint_dir_with_progress_needs_resume_and_corrupted_progress_is_refused(runs, inputs, tokenizer,
                                                                                     calibration_file, tmp_path):
    root, _ = runs
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(root / "killed-progress", checkpoint)
    model = _dense(inputs)
    with pytest.raises(FileExistsError, match="resume_from="):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False, checkpoint_dir=checkpoint)
    path = checkpoint / PROGRESS_NAME
    progress = json.loads(path.read_text())
    progress["record"]["steps"][0]["layer"] = 99
    path.write_text(json.dumps(progress))
    before = state_dict_hash(model)
    with pytest.raises(ValueError, match="step 1 .* does not fit this model"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False, resume_from=checkpoint)
    assert state_dict_hash(model) == before
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match="corrupted"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False, resume_from=checkpoint)
    with pytest.raises(ValueError, match="does not exist"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False, resume_from=tmp_path)


def test_cli_resumes_a_killed_search_and_writes_progress_to_its_checkpoint_dir(runs, inputs, tokenizer, tmp_path,
                                                                               capsys):
    """`optimum-cli multipruner prune --resume DIR --checkpoint-dir OTHER` finishes the killed search as the
    uninterrupted one ended, writing its progress to OTHER; OTHER then refuses a new search without --resume."""
    root, _ = runs
    model_dir, resume, progress_dir = tmp_path / "dense", tmp_path / "resume", tmp_path / "progress"
    shutil.copytree(inputs / "dense", model_dir)
    tokenizer.save_pretrained(model_dir)
    shutil.copytree(root / "killed-progress", resume)
    stamp = (resume / PROGRESS_NAME).read_bytes()
    common = ("multipruner", "prune", "-m", str(model_dir), "--config", str(inputs / CONFIG_NAME), "--no-progress")
    run_optimum_cli(*common, str(tmp_path / "out"), "--resume", str(resume), "--checkpoint-dir", str(progress_dir))

    (weights, record), (resumed_weights, resumed) = saved_result(root / "first"), saved_result(tmp_path / "out")
    assert [(s.stage, s.action, s.layer) for s in resumed.steps] == [(s.stage, s.action, s.layer) for s in record.steps]
    for ours, theirs in zip(resumed.steps, record.steps):  # this process loads the model with SDPA attention
        assert ours.perplexity == pytest.approx(theirs.perplexity, rel=1e-5)
    assert resumed.structure == record.structure and resumed.target_reached
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    progress = json.loads((progress_dir / PROGRESS_NAME).read_text())
    assert PruningRecord.from_dict(progress["record"]).steps == resumed.steps
    assert (resume / PROGRESS_NAME).read_bytes() == stamp  # the progress it resumed from is left as it was

    with pytest.raises((FileExistsError, SystemExit)) as refused:  # a new search may not overwrite that progress
        run_optimum_cli(*common, str(tmp_path / "again"), "--checkpoint-dir", str(progress_dir))
    message = str(refused.value) if refused.type is FileExistsError else capsys.readouterr().err
    assert "already holds the progress of a search" in message
    assert not (tmp_path / "again").exists()


def test_cli_starts_a_smaller_search_from_the_steps_it_shares_with_a_larger_one(runs, inputs, tokenizer, tmp_path):
    """`--shared-from DIR --target-ratio smaller`: the first stage comes from DIR, the rest is searched."""
    root, _ = runs
    model_dir = tmp_path / "dense"
    shutil.copytree(inputs / "dense", model_dir)
    tokenizer.save_pretrained(model_dir)
    larger = PruningRecord.from_dict(json.loads((root / "killed-progress" / PROGRESS_NAME).read_text())["record"])
    run_optimum_cli("multipruner", "prune", "-m", str(model_dir), "--config", str(inputs / CONFIG_NAME),
                    "--no-progress", "--target-ratio", "0.1", "--shared-from", str(root / "killed-progress"),
                    str(tmp_path / "out"))
    record = PruningRecord.load(tmp_path / "out")
    assert record.shared_steps >= 1 and record.steps[: record.shared_steps] == larger.steps[: record.shared_steps]
    assert record.config.target_ratio == 0.1 and record.steps[-1].ratio >= 0.1 > record.steps[-2].ratio


# --------------------------------------------------------------------------- saving and loading
STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[64, 0, 256, 128]
)


def pruned_pruner(tokenizer):
    """A pruner holding a pruned tiny model (applied from a record, no search)."""
    model = make_model("llama")
    record = PruningRecord("llama", 4, count_parameters(model), STRUCTURE, weight_reorder=False)
    pruner = MultiPruner(model, tokenizer)
    pruner.apply(record)
    return pruner


def snapshot(directory):
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def test_interrupted_save_leaves_the_previous_result_intact(tokenizer, tmp_path):
    pruner = pruned_pruner(tokenizer)
    out = tmp_path / "out"
    pruner.save_pretrained(out)
    before = snapshot(out)
    save = pruner.model.save_pretrained

    def crash_midway(directory, **kwargs):
        save(directory, **kwargs)  # every file written...
        raise KeyboardInterrupt  # ...then interrupted before the save completes

    pruner.model.save_pretrained = crash_midway
    with pytest.raises(KeyboardInterrupt):
        pruner.save_pretrained(out, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind


PICKLING = re.compile(r"import pickle|from pickle|pickle\.(load|dump)|torch\.(load|save)\(|joblib|dill")


def test_nothing_is_pickled(tokenizer, tmp_path):
    pruner = pruned_pruner(tokenizer)
    pruner.save_pretrained(tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    for source in Path(REPO, "optimum_multipruner").rglob("*.py"):
        assert not PICKLING.search(source.read_text(encoding="utf-8")), source


@pytest.mark.parametrize(
    "damage, error, message",
    [
        ("truncate model.safetensors", Exception, "incomplete metadata"),
        ("garble model.safetensors", Exception, "deserializing header"),
        ("truncate config.json", OSError, "not a valid JSON file"),
    ],
)
def test_damaged_pruned_checkpoint_fails_to_load_clearly(damage, error, message, tokenizer, tmp_path):
    pruned_pruner(tokenizer).save_pretrained(tmp_path / "out")
    action, name = damage.split()
    path = tmp_path / "out" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if action == "truncate" else b"\x00garbage")
    with pytest.raises(error, match=message):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_truncated_multipruner_config_is_refused(tmp_path):
    path = MultiPrunerConfig().save_pretrained(tmp_path)
    with open(path, "r+", encoding="utf-8") as handle:
        handle.truncate(40)
    with pytest.raises(ValueError, match="corrupted or truncated"):
        MultiPrunerConfig.from_pretrained(tmp_path)


def test_output_path_that_is_a_file_is_refused(tokenizer, tmp_path):
    pruner = pruned_pruner(tokenizer)
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        pruner.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me"


# Searches with `checkpoint_dir` a folder it may not write (or a new folder inside it), and saves a pruned model under
# it; prints what each raised and whether the weights stayed as they were. argv = model dir, tokenizer dir,
# configuration file, the locked folder.
LOCKED_SCRIPT = """
import json, os, sys
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from optimum_multipruner import MultiPruner, MultiPrunerConfig, PrunedStructure, PruningRecord, count_parameters
from optimum_multipruner.resume_state import state_dict_hash

model_dir, tokenizer_dir, config_file, locked = sys.argv[1:]
tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
results = {}
for name, checkpoint in (("checkpoint_dir", locked), ("new checkpoint_dir", os.path.join(locked, "new"))):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    before = state_dict_hash(model)
    try:
        MultiPruner(model, tokenizer).prune(MultiPrunerConfig.from_pretrained(config_file), progress=False,
                                            checkpoint_dir=checkpoint)
        results[name] = ["no error", ""]
    except Exception as error:
        results[name] = [type(error).__name__, str(error)]
    results[name].append(state_dict_hash(model) == before)
pruner = MultiPruner(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
structure = PrunedStructure([0, 4, 4, 4], [0, 2, 2, 2], [256, 256, 256, 256])
pruner.apply(PruningRecord("llama", 4, count_parameters(pruner.model), structure, weight_reorder=False))
try:
    pruner.save_pretrained(os.path.join(locked, "out"))
    results["output"] = ["no error", "", True]
except Exception as error:
    results["output"] = [type(error).__name__, str(error), True]
print(json.dumps(results))
"""


def without_file_permission_override():
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the capability bounding set (`prctl(PR_CAPBSET_DROP)`),
    so that a root process started next obeys file permissions like any user, on its own files too."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH (linux/capability.h)
        if libc.prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_paths_that_are_not_writable_are_refused_before_any_change(inputs, tmp_path):
    """A folder without write permission, for a search's `checkpoint_dir` and for the output. Root may write anywhere,
    so under root the check runs in a child process without the capabilities that override file permissions (a real
    restriction the kernel enforces, not a mock); under any other user, in a plain child process."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    arguments = [inputs / "dense", inputs / "tokenizer", inputs / CONFIG_NAME, locked]
    try:
        result = subprocess.run([sys.executable, "-c", LOCKED_SCRIPT, *map(str, arguments)], env=env,
                                capture_output=True, text=True, timeout=300,
                                preexec_fn=without_file_permission_override if os.geteuid() == 0 else None)
    finally:
        locked.chmod(0o700)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["checkpoint_dir"] == ["PermissionError", f"Cannot write search progress to {locked}: it is not "
                                         "writable.", True]
    error, message, unchanged = results["new checkpoint_dir"]
    assert error == "PermissionError" and str(locked / "new") in message and unchanged
    assert results["output"][:2] == ["PermissionError", f"Cannot write the output directory {locked / 'out'}: "
                                     f"{locked} is not writable."]
    assert not list(locked.iterdir())


def test_checking_an_output_path_creates_nothing(tokenizer, tmp_path):
    nested = tmp_path / "a" / "b" / "out"
    check_output_dir(nested, overwrite=False)
    assert not (tmp_path / "a").exists()
    pruned_pruner(tokenizer).save_pretrained(nested)  # the save itself creates the parents
    assert (nested / "config.json").is_file()
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_dir(tmp_path / "file" / "out", overwrite=False)


# --------------------------------------------------------------------------- bad input to the search
def _bad_model(kind):
    model = make_model("llama")
    if kind == "already pruned":
        record = PruningRecord("llama", 4, count_parameters(model), STRUCTURE, weight_reorder=False)
        return MultiPruner(model).apply(record)
    layer = model.model.layers[1].mlp.up_proj
    layer.weight = nn.Parameter(layer.weight.detach().to(torch.int8), requires_grad=False)
    return model


@pytest.mark.parametrize(
    "kind, message",
    [("already pruned", "already pruned \\(layer 0 keeps 0 KV heads"), ("integer weights", "floating-point")],
)
def test_model_that_cannot_be_searched_is_refused_before_any_change(kind, message, tokenizer, calibration_file,
                                                                   tmp_path):
    model = _bad_model(kind)
    before = state_dict_hash(model)
    with pytest.raises(ValueError, match=message):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False,
                                            checkpoint_dir=tmp_path / "checkpoint")
    assert state_dict_hash(model) == before and not (tmp_path / "checkpoint").exists()


def test_model_on_the_meta_device_is_refused(tokenizer):
    with torch.device("meta"):
        model = make_model("llama")
    with pytest.raises(ValueError, match="meta device"):
        MultiPruner(model, tokenizer)


@pytest.mark.parametrize(
    "content, message",
    [("", "is empty"), ('{"text": 1}\n{"text": 2}\n', "must hold text, but holds int"), ("\n\n\n", "holds no text")],
)
def test_calibration_file_without_text_is_refused(content, message, tokenizer, tmp_path):
    path = tmp_path / ("data.jsonl" if content.startswith("{") else "data.txt")
    path.write_text(content)
    model = make_model("llama")
    before = state_dict_hash(model)
    with pytest.raises(ValueError, match=message):
        MultiPruner(model, tokenizer).prune(search_config(str(path)), progress=False)
    assert state_dict_hash(model) == before


def test_checkpoint_path_that_is_a_file_is_refused(tokenizer, calibration_file, tmp_path):
    (tmp_path / "file").write_text("keep me")
    model = make_model("llama")
    with pytest.raises(FileExistsError, match="is a file"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), progress=False,
                                            checkpoint_dir=tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me"
