"""`optimum-cli multipruner ...` and the optimum-cli plugin, through optimum-cli's own entry point."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from testing_utils import run_optimum_cli, save_checkpoint

from optimum_multipruner import MultiPrunerConfig
from optimum_multipruner.commands.export import WEIGHT_FORMATS
from optimum_multipruner.commands.prune import CONFIG_OPTIONS
from optimum_multipruner.exporters import WEIGHT_FORMATS as API_WEIGHT_FORMATS

SEARCH_OPTIONS = (
    "--target-ratio", "0.3", "--mlp-channel-group-size", "64", "--width-alignment", "32",
    "--num-calibration-samples-block", "16", "--num-calibration-samples-width", "8", "--sequence-length", "32",
    "--batch-size", "4", "--no-progress",
)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, tokenizer):
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "dense", tokenizer, seed=5)


@pytest.fixture(scope="module")
def pruned_dir(dense_dir, calibration_file):
    out = os.path.join(os.path.dirname(dense_dir), "pruned")
    run_optimum_cli("multipruner", "prune", "-m", dense_dir, out, "--calibration-dataset", calibration_file,
                    *SEARCH_OPTIONS)
    return out


def test_help_lists_the_commands():
    """Runs the console script in a fresh process: the plugin loads without importing the library."""
    import optimum_multipruner

    root = os.path.dirname(os.path.dirname(optimum_multipruner.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    cli = [sys.executable, "-m", "optimum.commands.optimum_cli"]
    result = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "multipruner" in result.stdout and "export" in result.stdout
    result = subprocess.run([*cli, "multipruner", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    for command in ("prune", "export", "info", "benchmark", "evaluate"):
        assert command in result.stdout


def test_prune_options_cover_every_config_field():
    assert [name for name, *_ in CONFIG_OPTIONS] == [field.name for field in dataclasses.fields(MultiPrunerConfig)]
    assert (None, *WEIGHT_FORMATS) == API_WEIGHT_FORMATS


def test_prune_writes_a_pruned_checkpoint(pruned_dir, dense_dir, calibration_file, capsys):
    with open(os.path.join(pruned_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert config["model_type"] == "multipruner_llama"
    with open(os.path.join(pruned_dir, "pruning_record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["config"]["target_ratio"] == 0.3 and record["config"]["sequence_length"] == 32
    assert record["steps"]

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_optimum_cli("multipruner", "prune", "-m", dense_dir, pruned_dir, "--calibration-dataset", calibration_file)
    blockpruner = os.path.join(os.path.dirname(pruned_dir), "blockpruner")
    config_file = os.path.join(os.path.dirname(pruned_dir), "search.json")
    with open(config_file, "w", encoding="utf-8") as handle:
        json.dump({"calibration_dataset": calibration_file, "target_ratio": 0.9}, handle)
    run_optimum_cli("multipruner", "prune", "-m", dense_dir, blockpruner, "--config", config_file, "--blockpruner",
                    *SEARCH_OPTIONS)  # options override the file: target ratio 0.3
    with open(os.path.join(blockpruner, "pruning_record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["config"]["pruning_distribution"] == [1.0, 0.0, 0.0] and record["config"]["target_ratio"] == 0.3
    assert {step["stage"] for step in record["steps"]} == {"block"}
    assert "removed" in capsys.readouterr().out


def test_info_prints_the_layer_table(pruned_dir, capsys):
    run_optimum_cli("multipruner", "info", pruned_dir)
    table = capsys.readouterr().out
    assert "KV heads" in table and "MLP width" in table and "total parameters" in table
    run_optimum_cli("multipruner", "info", pruned_dir, "--json")
    summary = json.loads(capsys.readouterr().out)
    with open(os.path.join(pruned_dir, "config.json"), encoding="utf-8") as handle:
        pruning = json.load(handle)["pruning"]
    assert [row["kv_heads"] for row in summary["layers"]] == pruning["num_key_value_heads"]
    assert [row["mlp_width"] for row in summary["layers"]] == pruning["intermediate_size"]
    assert summary["parameters"] < summary["dense_parameters"]


def test_export_applies_a_record_and_benchmark_runs(pruned_dir, dense_dir, tmp_path, capsys):
    ir = str(tmp_path / "pruned_ov")
    record = os.path.join(pruned_dir, "pruning_record.json")
    run_optimum_cli("multipruner", "export", "-m", dense_dir, "--record", record, ir, "--disable-convert-tokenizer")
    with open(os.path.join(ir, "config.json"), encoding="utf-8") as handle:
        exported = json.load(handle)
    with open(os.path.join(pruned_dir, "config.json"), encoding="utf-8") as handle:
        assert exported["pruning"] == json.load(handle)["pruning"]
    assert exported["model_type"] == "llama"
    run_optimum_cli("multipruner", "info", ir)  # the export directory describes its structure too
    assert "total parameters" in capsys.readouterr().out

    dense_ir = str(tmp_path / "dense_ov")
    run_optimum_cli("export", "openvino", "--model", dense_dir, "--task", "text-generation-with-past", dense_ir,
                    "--disable-convert-tokenizer")
    results_file, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    run_optimum_cli("multipruner", "benchmark", "-m", ir, "-b", dense_ir, "--prompt-length", "8", "--new-tokens", "3",
                    "--repetitions", "2", "--warmup", "1", "--output", str(results_file), "--plot", str(chart))
    assert "ratio" in capsys.readouterr().out
    results = json.loads(results_file.read_text(encoding="utf-8"))
    assert results["ratios"]["size_bytes"] < 1
    assert chart.stat().st_size > 0


def test_export_openvino_hook_only_touches_pruned_checkpoints(pruned_dir, dense_dir):
    from argparse import Namespace

    from optimum.commands.export.openvino import OVExportCommand

    from optimum.commands.register.register_multipruner import _prepare_pruned_export

    assert getattr(OVExportCommand.run, "_multipruner_wrapped", False)

    def args(model, **values):
        defaults = dict(cache_dir=None, task="auto", weight_format=None, quant_mode=None, group_size_fallback=None)
        return Namespace(model=model, **{**defaults, **values})

    dense = args(dense_dir)
    assert not _prepare_pruned_export(dense) and dense.task == "auto"
    pruned = args(pruned_dir)
    assert _prepare_pruned_export(pruned)
    assert pruned.task == "text-generation-with-past" and pruned.weight_format is None  # 0.3M dense parameters
    int4 = args(pruned_dir, weight_format="int4")
    assert _prepare_pruned_export(int4) and int4.group_size_fallback == "adjust"
