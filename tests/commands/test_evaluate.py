"""`optimum-cli multipruner evaluate` on a tiny saved model and a local text file (no zero-shot tasks, no Hub)."""

import json
import math

import pytest
from test_cli import cli_error
from testing_utils import make_model, run_optimum_cli, save_checkpoint

from optimum_multipruner.evaluation import evaluate_perplexity


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return save_checkpoint(tmp_path_factory.mktemp("evaluate") / "model", tokenizer, seed=3)


def test_evaluate_writes_perplexity_json(model_dir, tokenizer, calibration_file, tmp_path, capsys):
    output = tmp_path / "results.json"
    run_optimum_cli("multipruner", "evaluate", "-m", model_dir, "--perplexity-dataset", calibration_file,
                    "--sequence-length", "32", "--max-windows", "3", "--tasks", "none", "--batch-size", "2",
                    "--no-progress", "--output", str(output))
    assert "perplexity" in capsys.readouterr().out
    written = json.loads(output.read_text(encoding="utf-8"))
    assert written["model"] == model_dir and written["backend"] == "pytorch"
    [result] = written["results"]
    assert result["kind"] == "perplexity" and result["dataset"] == calibration_file
    assert result["num_windows"] == 3 and result["sequence_length"] == 32 and result["batch_size"] == 2
    expected = evaluate_perplexity(make_model("llama", seed=3), tokenizer, calibration_file, sequence_length=32,
                                   max_windows=3, progress=False)
    assert math.isclose(result["perplexity"], expected["perplexity"], rel_tol=1e-4)


def test_evaluate_detects_an_openvino_ir(model_dir, calibration_file, tmp_path):
    from optimum_multipruner.exporters import export_openvino

    ir = export_openvino(model_dir, tmp_path / "ir", weight_format="fp32", convert_tokenizer=False)
    outputs = {}
    for backend, model in (("pytorch", model_dir), ("openvino", str(ir))):
        outputs[backend] = tmp_path / f"{backend}.json"
        run_optimum_cli("multipruner", "evaluate", "-m", model, "--perplexity-dataset", calibration_file,
                        "--sequence-length", "32", "--max-windows", "2", "--tasks", "none", "--no-progress",
                        "--output", str(outputs[backend]))
    results = {backend: json.loads(path.read_text(encoding="utf-8")) for backend, path in outputs.items()}
    assert results["openvino"]["backend"] == "openvino"
    assert math.isclose(results["openvino"]["results"][0]["perplexity"],
                        results["pytorch"]["results"][0]["perplexity"], rel_tol=1e-3)


def test_evaluate_refuses_to_skip_everything(model_dir, capsys):
    line = cli_error(capsys, "multipruner", "evaluate", "-m", model_dir, "--perplexity-dataset", "none", "--tasks", "none")
    assert "Nothing to evaluate" in line
