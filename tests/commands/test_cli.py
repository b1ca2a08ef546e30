"""`optimum-cli multipruner ...` and the optimum-cli plugin, through optimum-cli's own entry point."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from argparse import ArgumentParser, Namespace
from typing import Optional, Union

import pytest
import torch
from testing_utils import optimum_cli_console, run_optimum_cli, save_checkpoint

from optimum.commands.multipruner.common import load_model_and_tokenizer
from optimum.commands.multipruner.options import NONE, _option_type
from optimum.commands.multipruner.prune import PruneCommand, search_options, search_values
from optimum_multipruner import FastSearchConfig, MultiPrunerConfig
from optimum_multipruner.exporters.openvino_command import prepare_openvino_export_args

SEARCH_OPTIONS = (
    "--target-ratio", "0.3", "--mlp-channel-group-size", "64", "--width-alignment", "32",
    "--num-calibration-samples-block", "16", "--num-calibration-samples-width", "8", "--sequence-length", "32",
    "--batch-size", "4", "--no-progress",
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, tokenizer):
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "dense", tokenizer, seed=5)


@pytest.fixture(scope="module")
def pruned_dir(dense_dir, calibration_file):
    out = os.path.join(os.path.dirname(dense_dir), "pruned")
    run_optimum_cli("multipruner", "prune", "-m", dense_dir, out, "--calibration-dataset", calibration_file,
                    *SEARCH_OPTIONS)
    return out


def cli_error(capsys, *argv: str) -> str:
    """Run a command that must fail on a user error: exit status 2 and exactly one line on stderr, returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_optimum_cli(*argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def run_console(*argv: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    """The `optimum-cli` console script in a fresh process."""
    return subprocess.run([optimum_cli_console(), *argv], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


# --------------------------------------------------------------------------- the plugin
def test_help_lists_the_commands_with_one_copy_of_the_configs(tmp_path):
    """The options come from the library's own config classes (no second copy of configuration.py loaded apart),
    and optimum-cli starts without torch, transformers or the OpenVINO runtime: the package's registration waits for
    a command to run."""
    script = (
        "import sys\n"
        "from optimum.commands.optimum_cli import main\n"
        "for argv in (['--help'], ['multipruner', '--help'], ['multipruner', 'prune', '--help'],\n"
        "             ['multipruner', 'recover', '--help'], ['export', 'openvino', '--help']):\n"
        "    sys.argv = ['optimum-cli', *argv]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "loaded = sorted({'openvino', 'torch', 'transformers'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
        "copies = [name for name, module in list(sys.modules.items())\n"
        "          if (getattr(module, '__file__', None) or '').endswith('configuration.py')\n"
        "          and hasattr(module, 'MultiPrunerConfig')]\n"
        "assert copies == ['optimum_multipruner.configuration'], copies  # one copy: the library's own classes\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "multipruner" in result.stdout
    for command in ("prune", "export", "info", "benchmark", "evaluate", "--target-ratio", "--device-map"):
        assert command in result.stdout


def test_only_the_stock_export_of_a_pruned_checkpoint_registers_at_start_up(pruned_dir, dense_dir):
    """The plugin reads optimum-cli's arguments: `export openvino` of a pruned checkpoint (any spelling of --model)
    registers the pruned model types at start-up; other models and commands, and unreadable ones, do not."""
    from optimum.commands.register.register_multipruner import _exports_a_pruned_checkpoint

    for argv in (["-m", pruned_dir], [f"--model={pruned_dir}"], ["--task", "text-generation", "--model", pruned_dir]):
        assert _exports_a_pruned_checkpoint(["export", "openvino", *argv, "out"])
    for argv in (["export", "openvino", "-m", dense_dir, "out"], ["export", "openvino-pruned", "-m", pruned_dir, "out"],
                 ["multipruner", "info", pruned_dir], ["export", "openvino", "-m", "/no/such/folder", "out"],
                 ["export", "openvino", "--help"], ["export", "openvino", "-m"]):
        assert not _exports_a_pruned_checkpoint(argv)


def test_two_copies_of_the_plugin_register_the_commands_once(tmp_path):
    """A source checkout on sys.path next to an installed copy: optimum-cli reads REGISTER_COMMANDS from both
    register directories (here the repository and a copy of it); argparse would refuse `multipruner` twice."""
    register = tmp_path / "optimum" / "commands" / "register"
    register.mkdir(parents=True)
    shutil.copy(os.path.join(REPO_ROOT, "optimum", "commands", "register", "register_multipruner.py"), register)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO_ROOT]))
    for _ in range(2):
        result = run_console("multipruner", "--help", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "prune" in result.stdout


def test_export_openvino_pruned_is_registered_and_patches_nothing(pruned_dir, dense_dir, capsys):
    import optimum.commands.export.openvino as stock
    from optimum.commands.export.base import ExportCommand
    from optimum.commands.multipruner.export_openvino import PrunedOVExportCommand, is_pruned_checkpoint
    from optimum.commands.register.register_multipruner import REGISTER_COMMANDS

    assert (PrunedOVExportCommand, ExportCommand) in list(REGISTER_COMMANDS)  # as optimum-intel registers its own
    assert stock.OVExportCommand.run.__module__ == stock.__name__  # the stock command is optimum-intel's, untouched
    assert not is_pruned_checkpoint(dense_dir) and is_pruned_checkpoint(pruned_dir)
    line = cli_error(capsys, "export", "openvino-pruned", "--model", dense_dir, os.path.join(dense_dir, "ir"))
    assert "is not a pruned checkpoint" in line and "optimum-cli export openvino" in line

    def args(model, **values):
        defaults = dict(cache_dir=None, task="auto", weight_format=None, quant_mode=None, group_size_fallback=None)
        return Namespace(model=model, **{**defaults, **values})

    pruned = args(pruned_dir)
    prepare_openvino_export_args(pruned)
    assert pruned.task == "text-generation-with-past" and pruned.weight_format is None  # 0.3M dense parameters
    int4 = args(pruned_dir, weight_format="int4")
    prepare_openvino_export_args(int4)
    assert int4.group_size_fallback == "adjust"


# --------------------------------------------------------------------------- prune options from MultiPrunerConfig
def test_prune_options_cover_every_config_field():
    options = search_options()
    defaults = MultiPrunerConfig()
    paths = [(field.name,) for field in dataclasses.fields(MultiPrunerConfig) if field.name != "fast_search"]
    paths[paths.index(("search_mode",)) + 1:] = [
        *(("fast_search", field.name) for field in dataclasses.fields(FastSearchConfig)),
        *paths[paths.index(("search_mode",)) + 1:],
    ]
    assert [option.path for option in options] == paths
    for option in options:
        assert option.help, f"{option.name} has no help in its field's metadata"
        default = defaults
        for name in option.path:
            default = getattr(default, name)
        if default is None:
            continue
        typed = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        assert option.parse(typed) == default, option.name  # the default, typed on the command line, parses back
    advanced = {option.name for option in options if option.advanced}
    assert advanced == {"accelerated_search", "weight_reorder", "width_alignment", "head_chunk_size"}
    choices = {option.name: option.choices for option in options if option.choices}
    assert choices == {"importance_metric": ("ppl", "kl"), "search_mode": ("exact", "fast")}


@pytest.mark.parametrize(
    "hint, text, expected",
    [
        (Optional[str], "cpu", "cpu"),
        (Union[str, None], "cuda:1", "cuda:1"),
        (int | None, "7", 7),
        (Optional[float], "0.5", 0.5),
        (Optional[float], "None", NONE),  # an optional field can be set to None
        (bool, "off", False),
        (tuple[str, ...], "attention, mlp", ("attention", "mlp")),
        (tuple[float, float, float], "1,2,3", (1.0, 2.0, 3.0)),
        (Optional[tuple[int, ...]], "4,8", (4, 8)),
        (list[float], "3,1", (3.0, 1.0)),
        (Union[str, list[str]], "a.jsonl,b.jsonl", ("a.jsonl", "b.jsonl")),  # one source or several
        (dict[str, int], '{"a": 1}', {"a": 1}),  # JSON
        (set[int], "{}", "{}"),  # other types pass through as text, for validate() to check
    ],
)
def test_option_types_follow_the_type_hints(hint, text, expected):
    parse, _ = _option_type(hint)
    assert parse(text) == expected


def test_help_lists_the_implementation_knobs_apart():
    parser = ArgumentParser()
    PruneCommand.parse_args(parser)
    text = parser.format_help()
    main, advanced = text.split("search settings (MultiPrunerConfig fields):")[1].split("advanced search settings:")
    assert "--fast-search-screen" in main and "{exact,fast}" in main and "--width-alignment" not in main
    assert "--width-alignment" in advanced and "--head-chunk-size" in advanced


def test_none_on_the_command_line_sets_an_optional_field_over_the_config_file(tmp_path):
    config_file = tmp_path / "search.json"  # as versions before `FastSearchConfig` wrote it: a flat key
    config_file.write_text(json.dumps({"fast_search_screen": 0.5, "fast_search_keep": 0.25, "target_ratio": 0.3}))
    parser = ArgumentParser()
    PruneCommand.parse_args(parser)  # the parser `optimum-cli multipruner prune` builds
    args = parser.parse_args(["-m", "dense", "out", "--config", str(config_file), "--fast-search-screen", "none",
                              "--max-steps", "3"])
    values = search_values(args)
    assert values == {"fast_search": {"screen": None, "keep": 0.25}, "target_ratio": 0.3, "max_steps": 3}
    assert MultiPrunerConfig(**values).fast_search == FastSearchConfig(screen=None, keep=0.25)


# --------------------------------------------------------------------------- commands
def test_prune_writes_a_pruned_checkpoint(pruned_dir, dense_dir, calibration_file, capsys):
    with open(os.path.join(pruned_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert config["model_type"] == "multipruner_llama"
    with open(os.path.join(pruned_dir, "pruning_record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["config"]["target_ratio"] == 0.3 and record["config"]["sequence_length"] == 32
    assert record["steps"]

    line = cli_error(capsys, "multipruner", "prune", "-m", dense_dir, pruned_dir, "--calibration-dataset",
                     calibration_file)
    assert "already exists" in line and "--overwrite" in line
    blockpruner = os.path.join(os.path.dirname(pruned_dir), "blockpruner")
    config_file = os.path.join(os.path.dirname(pruned_dir), "search.json")
    with open(config_file, "w", encoding="utf-8") as handle:
        json.dump({"config_type": "MultiPrunerConfig", "calibration_dataset": calibration_file, "target_ratio": 0.9},
                  handle)  # a saved config's type tag is no field
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
    with open(os.path.join(ir, "pruning_record.json"), encoding="utf-8") as handle, open(record) as original:
        assert json.load(handle)["structure"] == json.load(original)["structure"]  # the IR says how it was made
    run_optimum_cli("multipruner", "info", ir)  # the export directory describes its structure too
    assert "total parameters" in capsys.readouterr().out

    dense_ir = str(tmp_path / "dense_ov")
    run_optimum_cli("export", "openvino", "--model", dense_dir, "--task", "text-generation-with-past", dense_ir,
                    "--disable-convert-tokenizer")
    results_file, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    bench = ("multipruner", "benchmark", "-m", ir, "-b", dense_ir, "--prompt-length", "8", "--new-tokens", "3",
             "--repetitions", "2", "--warmup", "1")
    run_optimum_cli(*bench, "--output", str(results_file), "--plot", str(chart))
    assert "ratio" in capsys.readouterr().out
    results = json.loads(results_file.read_text(encoding="utf-8"))
    assert results["engine"] == "openvino" and results["ratios"]["size_bytes"] < 1
    assert chart.stat().st_size > 0

    for flag, path in (("--output", results_file), ("--plot", chart)):  # existing files are kept
        before = path.read_bytes()
        line = cli_error(capsys, *bench, flag, str(path))
        assert "already exists" in line and "--overwrite" in line and path.read_bytes() == before
    run_optimum_cli(*bench, "--engine", "genai", "--output", str(results_file), "--overwrite")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    assert results["engine"] == "genai"
    assert set(results["ratios"]) == {"ttft_s", "tpot_s", "throughput_tokens_per_s", "peak_rss_bytes",
                                      "model_memory_bytes", "size_bytes"}
    assert all(run["ttft_s"] > 0 and run["tpot_s"] > 0 for run in results["runs"]["pruned"])
    assert "time to first token" in capsys.readouterr().out


def test_export_gguf_from_a_checkpoint_and_from_a_record(pruned_dir, dense_dir, tmp_path, capsys):
    import gguf

    from_checkpoint, from_record = str(tmp_path / "pruned.gguf"), str(tmp_path / "record.gguf")
    record = os.path.join(pruned_dir, "pruning_record.json")
    run_optimum_cli("multipruner", "export", "--format", "gguf", "--outtype", "f32", "-m", pruned_dir, from_checkpoint)
    run_optimum_cli("multipruner", "export", "--format", "gguf", "--outtype", "f32", "-m", dense_dir, "--record",
                    record, from_record)
    files = [gguf.GGUFReader(path) for path in (from_checkpoint, from_record)]
    with open(os.path.join(pruned_dir, "config.json"), encoding="utf-8") as handle:
        pruning = json.load(handle)["pruning"]
    for reader in files:
        assert json.loads(reader.fields["multipruner.structure"].contents()) == pruning
        assert "## Structure" in reader.fields["multipruner.model_card"].contents()
    assert [t.name for t in files[0].tensors] == [t.name for t in files[1].tensors]
    assert all((a.data == b.data).all() for a, b in zip(files[0].tensors, files[1].tensors))

    line = cli_error(capsys, "multipruner", "export", "--format", "gguf", "-m", pruned_dir, from_checkpoint)
    assert "already exists" in line and "--overwrite" in line
    line = cli_error(capsys, "multipruner", "export", "--outtype", "q8_0", "-m", pruned_dir, str(tmp_path / "ir"))
    assert "--format gguf" in line
    line = cli_error(capsys, "multipruner", "export", "--format", "gguf", "--weight-format", "int8", "-m", pruned_dir,
                     str(tmp_path / "x.gguf"))
    assert "--outtype" in line and not (tmp_path / "x.gguf").exists()


def test_an_output_named_gguf_is_a_gguf_file_and_a_killed_exports_leftover_is_removed(pruned_dir, tmp_path, capsys):
    import gguf

    leftover = tmp_path / ".tmp-k1ll3d_0model.gguf"  # what `atomic_file` left when an export was killed
    leftover.write_bytes(b"GGUF partial")
    kept = tmp_path / ".tmp-k1ll3d_0other.gguf"  # another file's: not ours to remove
    kept.write_bytes(b"GGUF partial")
    run_optimum_cli("multipruner", "export", "--outtype", "f32", "-m", pruned_dir, str(tmp_path / "model.gguf"))
    reader = gguf.GGUFReader(tmp_path / "model.gguf")  # a file, not an OpenVINO folder named model.gguf
    assert reader.fields["general.architecture"].contents() == "deci"
    assert not leftover.exists() and kept.exists()
    line = cli_error(capsys, "multipruner", "export", "--format", "openvino", "-m", pruned_dir,
                     str(tmp_path / "ir.gguf"))
    assert "named like a GGUF file" in line and not (tmp_path / "ir.gguf").exists()


# --------------------------------------------------------------------------- user errors: one line, exit status 2
def test_a_bad_value_is_one_line_naming_the_fix(dense_dir, tmp_path, capsys, monkeypatch):
    argv = ("multipruner", "prune", "-m", dense_dir, str(tmp_path / "out"), "--target-ratio", "1.5")
    line = cli_error(capsys, *argv)
    assert line.startswith("optimum-cli multipruner prune: error:") and "target_ratio" in line and "(0, 1)" in line
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("MULTIPRUNER_DEBUG", "1")  # the traceback, for a developer
    with pytest.raises(ValueError, match="target_ratio"):
        run_optimum_cli(*argv)


def test_a_missing_local_folder_says_so(capsys, tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    assert "does not exist" in cli_error(capsys, "multipruner", "info", missing)
    assert "does not exist" in cli_error(capsys, "multipruner", "export", "-m", missing, str(tmp_path / "ir"))
    line = cli_error(capsys, "multipruner", "export", "-m", missing, "--record", str(tmp_path / "r.json"),
                     str(tmp_path / "ir"))
    assert "r.json does not exist" in line


@pytest.mark.parametrize("offline", [False, True])
def test_an_unreachable_hub_says_so(offline, tmp_path):
    """No network here: a Hub-looking id that is not cached fails with one line pointing to the way out."""
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = run_console("multipruner", "info", "someone/some-model", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "someone/some-model is not a local folder" in lines[0], result.stderr[-2000:]
    if offline:
        assert "HF_HUB_OFFLINE=1 allows only models already in the Hugging Face cache" in lines[0]
    else:
        assert "cannot be reached" in lines[0] and "local model folder" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]


@pytest.mark.parametrize(
    "options, message",
    [
        (("--max-memory", "0=lots"), "is not a size"),
        (("--max-memory", "gpu0=1GiB"), "unknown device"),
        (("--device-map", '{"model": "gpu7"}'), "use a GPU index"),
        (("--device-map", "everywhere"), "neither a known name nor a JSON object"),
        (("--device", "tpu"), "expected auto or a device"),
        (("--pruning-distribution", "1,x,2"), "invalid comma-separated float value"),
    ],
)
def test_bad_loading_and_search_values_are_refused_by_the_parser(options, message, dense_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_optimum_cli("multipruner", "prune", "-m", dense_dir, str(tmp_path / "out"), *options)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_inconsistent_placement_is_refused_before_loading(dense_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "add --device-map" in cli_error(capsys, "multipruner", "prune", "-m", dense_dir, out, "--max-memory",
                                           "cpu=1GiB")
    assert "drop --device" in cli_error(capsys, "multipruner", "prune", "-m", dense_dir, out, "--device-map", "auto",
                                        "--device", "cpu")
    if not torch.cuda.is_available():
        line = cli_error(capsys, "multipruner", "prune", "-m", dense_dir, out, "--device", "cuda", "--target-ratio",
                         "0.3", "--calibration-dataset", "x.txt")
        assert "CUDA is not available" in line


# --------------------------------------------------------------------------- model loading
def loading_args(model, **values):
    return Namespace(model=model, **{**dict(dtype=None, device="auto", device_map=None, max_memory=None), **values})


def test_loading_defaults_to_float32_on_the_cpu_and_auto_keeps_the_checkpoint_dtype(tmp_path, tokenizer):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU defaults (device auto resolves to CUDA here)")
    bf16 = tmp_path / "bf16"
    from testing_utils import make_model

    make_model("llama").to(torch.bfloat16).save_pretrained(bf16)
    tokenizer.save_pretrained(bf16)
    model, _ = load_model_and_tokenizer(loading_args(str(bf16)))
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    model, _ = load_model_and_tokenizer(loading_args(str(bf16), dtype="auto"))
    assert model.dtype == torch.bfloat16
    # a device map loads in the checkpoint's dtype (without an accelerator, transformers puts everything on the CPU)
    model, _ = load_model_and_tokenizer(loading_args(str(bf16), device_map="auto", max_memory={"cpu": "1GiB"}))
    assert model.dtype == torch.bfloat16 and {p.device.type for p in model.parameters()} == {"cpu"}


def test_evaluate_refuses_an_existing_output(pruned_dir, calibration_file, tmp_path, capsys):
    output = tmp_path / "results.json"
    output.write_text("{}", encoding="utf-8")
    line = cli_error(capsys, "multipruner", "evaluate", "-m", pruned_dir, "--perplexity-dataset", calibration_file,
                     "--tasks", "none", "--output", str(output))
    assert "already exists" in line and "--overwrite" in line and output.read_text(encoding="utf-8") == "{}"
