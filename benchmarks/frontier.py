"""Where pruning pays: quality, speed and size of dense, pruned and recovered SmolLM2-135M as int8 and int4 IRs.

    python benchmarks/frontier.py --workdir frontier-work --max-tokens 983040 --qat-tokens 122880

One command, resumable: every stage skips what its output folder or result file already holds, and a recovery run
continues from its last checkpoint. Stages, in order (`--stages` runs a subset; `--models` limits the stages to some
models, e.g. `--models pruned10_recovered,dense_qat,pruned10_qat` to finish the 10% model's rows first; `speed` and
`report` always cover every IR there is):

* `models`: the dense model (examples/smollm2.py) and the results table's MultiPruner 44:52:4 records at 10% and 20%
  applied to it (benchmarks/results/smollm2/multipruner_44_52_4_{10,20}/pruning_record.json).
* `recover`: each pruned model distilled from the dense one (`MultiPruner.recover` with `RecoveryConfig`'s default
  recipe, the recipe study's choice: full fine-tuning, KL to the teacher; in bf16 mixed precision) on the local C4
  sample (../shared/assets/c4-redpajama-sample: C4 train documents, never evaluation text), `--max-tokens` tokens in
  sequences of 512. On the way, the recovery curve: WikiText-2 perplexity on the first `CURVE_WINDOWS` test windows
  before training, after 30,720 tokens (the recipe study's budget) and at every doubling, and at the end
  (`results/pruned{10,20}_curve.json`); the report fits the share of the gap closed against log(tokens) and gives the
  budget each goal would take by that trend.
* `pytorch`: WikiText-2 perplexity of every model in PyTorch (fp32) on the first `--pytorch-windows` test windows of
  2048 tokens (default 40): the numbers of the recovery goals (share of the gap to dense that recovery closes).
* `export`: every model to int4 (group size 64 for every model: 64 divides the hidden size 576 and every pruned
  width, so no layer falls back to another group size) and int8 (per-channel) IRs; the dense and the recovered models
  also to `int4_awq`: NNCF's data-aware int4 (AWQ + scale estimation, no training) on the search's calibration text,
  the best int4 a user can make without training.
* `qat`: quantization-aware distillation to int4 (`RecoveryConfig.quantization="int4"`, NNCF FQ_LORA, AWQ + scale
  estimation start, `--qat-tokens` tokens of the same text each) of the dense model (`dense_qat`: the fair baseline
  at equal effort) and of each recovered model (`pruned{10,20}_qat`), each written as its int4 IR.
* `evaluate`: per IR, WikiText-2 perplexity on the first 40 test windows of 2048 tokens and the 5-task zero-shot mean
  (PIQA, WinoGrande, HellaSwag, ARC-e, ARC-c; first 200 items each; standard errors), int4 IRs first.
* `speed`: openvino-genai TTFT, TPOT and throughput of every int8/int4 IR, all compiled at once and run interleaved
  (order reversed every round), prompt 128, 32 new tokens, `--repetitions` runs after one warm-up.
* `report`: benchmarks/results/frontier.json, frontier.md (the table), frontier.png (quality against time per
  output token, one point per IR, size as label, the Pareto front drawn and, for a few latency budgets, the point a
  user would pick) and frontier_curve.png (the recovery curves, the goals and the trends).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional

from optimum_multipruner import MultiPruner
from optimum_multipruner.benchmark import measure_interleaved
from optimum_multipruner.recovery import RecoveryConfig
from optimum_multipruner.utils import atomic_write_text, get_logger, read_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from recovery_recipes import QUANTIZATION_AWARE, MeasuredCurve, tokens_per_step  # noqa: E402 (benchmarks/ on sys.path)
from smollm2 import ASSETS, DEFAULT_WIKITEXT, LOCAL_ALPACA, prepare_smollm2, pruned_smollm2  # noqa: E402

logger = get_logger("frontier")

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = {ratio: os.path.join(HERE, "results", "smollm2", f"multipruner_44_52_4_{ratio}", "pruning_record.json")
           for ratio in (10, 20)}
C4_FILES = [os.path.join(ASSETS, "c4-redpajama-sample", f"sample_c4-rp{i}.jsonl") for i in (1, 2)]
STAGES = ("models", "recover", "pytorch", "export", "qat", "evaluate", "speed", "report")
FORMATS = ("int4", "int8", "int4_awq")
QAT_MODELS = {"dense_qat": "dense", "pruned10_qat": "pruned10_recovered", "pruned20_qat": "pruned20_recovered"}
AWQ_CALIBRATION_ROWS = 40  # the search's calibration rows (first set): the same text for data-aware int4
LATENCY_BUDGETS = (0.75, 0.85, 1.0)  # TPOT budgets, as shares of the best dense int4's, a user picks an IR for
INT4_GROUP_SIZE = 64
WIKITEXT_WINDOWS = 40
ZERO_SHOT_LIMIT = 200
CURVE_WINDOWS = 8  # WikiText-2 windows of 2048 of the recovery curve (about 80 s a point on the 2-core CPU)
CURVE_FIRST_TOKENS = 30_720  # the recipe study's budget; then every doubling
GAP_GOALS = {10: 0.75, 20: 0.65}  # share of the fp32 WikiText-2 gap recovery closes within 1M tokens


def recovery_config(max_tokens: int, teacher: str, dataset: str, **overrides: Any) -> RecoveryConfig:
    """The frontier's recovery: `RecoveryConfig`'s default recipe (the recipe study's choice; its constant schedule
    lets a later run extend the budget), up to 2 passes over the text (a budget of 1M tokens is about the local C4
    sample's size); `overrides` replace fields (the quantization-aware runs: the study's int4 arms' settings)."""
    values = dict(teacher=teacher, dataset=dataset, max_tokens=max_tokens, max_epochs=2, save_steps=50,
                  logging_steps=10)
    return RecoveryConfig(**{**values, **overrides})


def curve_steps(max_tokens: int, tokens_per_step: int) -> list[int]:
    """The optimizer steps the recovery curve is measured at: 0, `CURVE_FIRST_TOKENS` and each doubling, the end."""
    steps, tokens = {0, math.ceil(max_tokens / tokens_per_step)}, CURVE_FIRST_TOKENS
    while tokens < max_tokens:
        steps.add(tokens // tokens_per_step)
        tokens *= 2
    return sorted(steps)


def model_names() -> list[str]:
    return ["dense", *(f"pruned{ratio}{suffix}" for ratio in RECORDS for suffix in ("", "_recovered"))]


def all_model_names() -> list[str]:
    """Every name `--models` accepts: the PyTorch models and the quantization-aware ones."""
    return model_names() + list(QAT_MODELS)


def ir_names() -> list[tuple[str, str]]:
    """Every IR of the frontier as (model, format): each PyTorch model as int4 and int8, the dense and recovered ones
    also as data-aware int4, and the quantization-aware models as int4."""
    names = [(name, fmt) for name in model_names() for fmt in FORMATS
             if fmt != "int4_awq" or name == "dense" or name.endswith("_recovered")]
    return names + [(name, "int4") for name in QAT_MODELS]


class Frontier:
    """The stages, over one work folder."""

    def __init__(self, workdir: str, max_tokens: int, qat_tokens: int, repetitions: int, pytorch_windows: int,
                 models: Optional[set[str]] = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.models_selected = set(all_model_names()) if models is None else models
        self.max_tokens = max_tokens
        self.qat_tokens = qat_tokens
        self.repetitions = repetitions
        self.pytorch_windows = pytorch_windows
        os.makedirs(os.path.join(self.workdir, "results"), exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def selected(self, name: str) -> bool:
        return name in self.models_selected

    def model_dir(self, name: str) -> str:
        return str(prepare_smollm2()) if name == "dense" else self.path("models", name)

    # ------------------------------------------------------------------ stages
    def models(self) -> None:
        for ratio, record in RECORDS.items():
            if self.selected(f"pruned{ratio}") or self.selected(f"pruned{ratio}_recovered"):
                pruned_smollm2(record, self.model_dir(f"pruned{ratio}"))

    def training_text(self) -> str:
        """The two local C4 sample files as one JSON-lines file (written once)."""
        path = self.path("c4_train.jsonl")
        if not os.path.isfile(path):
            rows = [line for name in C4_FILES for line in open(name, encoding="utf-8") if line.strip()]
            atomic_write_text(path, "".join(rows))
        return path

    def recover(self) -> None:
        for ratio in RECORDS:
            output = self.model_dir(f"pruned{ratio}_recovered")
            if not self.selected(f"pruned{ratio}_recovered"):
                continue
            if os.path.isdir(output) and read_json(os.path.join(output, "pruning_record.json"))["recovery"][
                    "tokens_seen"] >= self.max_tokens:
                continue  # done; a larger --max-tokens extends the run from its last checkpoint
            checkpoints = self.path("recovery-checkpoints", f"pruned{ratio}")
            # bf16 autocast: the recipe study's base arm to 0.5 points at 1.25x the tokens/s on this CPU (AVX512-BF16)
            config = recovery_config(self.max_tokens, self.model_dir("dense"), self.training_text(), bf16=True)
            pruner = MultiPruner.from_pretrained(self.model_dir(f"pruned{ratio}"))
            start = time.perf_counter()
            pruner.recover(config, checkpoint_dir=checkpoints, resume=os.path.isdir(checkpoints),
                           callbacks=[self.curve_callback(ratio, config)])
            pruner.record.recovery["seconds_this_run"] = time.perf_counter() - start
            pruner.save_pretrained(output, overwrite=True)

    def curve_callback(self, ratio: int, config: RecoveryConfig) -> MeasuredCurve:
        """Measures the recovery curve of the `ratio` model into its curve file (with the dense model on the same
        windows, measured once)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from optimum_multipruner.evaluation import evaluate_perplexity

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir("dense"))
        curve_file = self.path("results", f"pruned{ratio}_curve.json")
        step_tokens = tokens_per_step(config)
        results = read_json(curve_file) if os.path.isfile(curve_file) else {
            "windows": CURVE_WINDOWS, "tokens_per_step": step_tokens, "curve": {}}

        def measure(model) -> float:
            return evaluate_perplexity(model, tokenizer, DEFAULT_WIKITEXT, 2048, CURVE_WINDOWS,
                                       progress=False)["perplexity"]

        def save() -> None:
            atomic_write_text(curve_file, json.dumps(results, indent=2) + "\n")

        if "dense" not in results:
            results["dense"] = measure(AutoModelForCausalLM.from_pretrained(self.model_dir("dense")).eval())
            save()
        return MeasuredCurve(curve_steps(config.max_tokens, step_tokens), measure, results, save)

    def pytorch(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from optimum_multipruner.evaluation import evaluate_perplexity

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir("dense"))
        for name in model_names():
            result_file = self.path("results", f"{name}_pytorch.json")
            if (not self.selected(name) or not os.path.isdir(self.model_dir(name))
                    or self.result_is_current(result_file, name)):
                continue
            model = AutoModelForCausalLM.from_pretrained(self.model_dir(name)).eval()
            result = {"wikitext2": evaluate_perplexity(model, tokenizer, DEFAULT_WIKITEXT, 2048, self.pytorch_windows,
                                                       progress=False),
                      "model_record": self.record_of(self.model_dir(name))}
            atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")

    def result_is_current(self, result_file: str, name: str) -> bool:
        """A result of this model in its current state (a recovery extended since makes it stale) and window count."""
        if not os.path.isfile(result_file):
            return False
        result = read_json(result_file)
        return (result.get("model_record") == self.record_of(self.model_dir(name))
                and result["wikitext2"]["num_windows"] == self.pytorch_windows)

    @staticmethod
    def record_of(folder: str) -> Any:
        path = os.path.join(folder, "pruning_record.json")
        return read_json(path) if os.path.isfile(path) else None

    def ir_dir(self, name: str, weight_format: str) -> str:
        return self.path("ir", f"{name}_{weight_format}")

    def export(self) -> None:
        from optimum.intel import OVWeightQuantizationConfig

        from optimum_multipruner.exporters import export_openvino

        configs = {"int4": OVWeightQuantizationConfig(bits=4, sym=False, group_size=INT4_GROUP_SIZE, ratio=1.0),
                   "int8": None,
                   "int4_awq": OVWeightQuantizationConfig(bits=4, sym=False, group_size=INT4_GROUP_SIZE, ratio=1.0,
                                                          dataset=self.calibration_rows(), awq=True,
                                                          scale_estimation=True,
                                                          num_samples=AWQ_CALIBRATION_ROWS)}
        for name, weight_format in ir_names():
            if name in QAT_MODELS or not self.selected(name):
                continue  # QAT_MODELS: written by the `qat` stage
            output = self.ir_dir(name, weight_format)
            if os.path.isdir(self.model_dir(name)) and (not os.path.isdir(output) or self.stale(name, output)):
                export_openvino(self.model_dir(name), output, weight_format=weight_format[:4],
                                quantization_config=configs[weight_format], overwrite=True)
                self.forget_results(name, weight_format)

    def forget_results(self, name: str, weight_format: str) -> None:
        """Drop the measurements of an IR written anew (and the interleaved timings, which include it)."""
        for result in (f"{name}_{weight_format}.json", "speed.json"):
            if os.path.isfile(self.path("results", result)):
                os.remove(self.path("results", result))

    def calibration_rows(self) -> list[str]:
        """The Alpaca rows of the search's first calibration set (the text data-aware int4 calibrates on)."""
        import random

        from optimum_multipruner.data import load_text_rows, sample_rows

        rows = load_text_rows(LOCAL_ALPACA)
        return sample_rows(rows, AWQ_CALIBRATION_ROWS, random.Random(42), LOCAL_ALPACA)

    def qat(self) -> None:
        """Quantization-aware distillation of the dense and recovered models, each written as its int4 IR."""
        from optimum_multipruner.exporters import export_openvino

        from optimum_multipruner.recovery import recover

        for name, source in QAT_MODELS.items():
            output, run_file = self.ir_dir(name, "int4"), self.path("results", f"{name}_run.json")
            done = os.path.isdir(output) and os.path.isfile(run_file) and read_json(run_file)["tokens_seen"] >= \
                self.qat_tokens
            if done or not self.selected(name) or not os.path.isdir(self.model_dir(source)):
                continue
            config = recovery_config(self.qat_tokens, self.model_dir("dense"), self.training_text(),
                                     **QUANTIZATION_AWARE, quantization_group_size=INT4_GROUP_SIZE)
            pruner = MultiPruner.from_pretrained(self.model_dir(source))
            checkpoints = self.path("recovery-checkpoints", name)
            report = recover(pruner.model, config, tokenizer=pruner.tokenizer, checkpoint_dir=checkpoints,
                             resume=os.path.isdir(checkpoints))
            if pruner.record is not None:
                pruner.record.recovery = report
            export_openvino(pruner.model, output, tokenizer=pruner.tokenizer, record=pruner.record, overwrite=True)
            atomic_write_text(run_file, json.dumps(report, indent=2) + "\n")
            self.forget_results(name, "int4")

    def stale(self, name: str, ir: str) -> bool:
        """Whether the IR was exported from an earlier state of the model (a recovery extended since)."""
        return self.record_of(self.model_dir(name)) != self.record_of(ir)

    def evaluate(self) -> None:
        from optimum.intel import OVModelForCausalLM
        from transformers import AutoTokenizer

        from optimum_multipruner.evaluation import evaluate_perplexity, evaluate_zero_shot

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir("dense"))
        int4_first = sorted(ir_names(), key=lambda ir: ir[1] == "int8")  # the comparison that matters most
        for name, weight_format in int4_first:
            ir, result_file = self.ir_dir(name, weight_format), self.path("results", f"{name}_{weight_format}.json")
            if not self.selected(name) or os.path.isfile(result_file) or not os.path.isdir(ir):
                continue
            logger.warning("Evaluating %s", ir)
            model = OVModelForCausalLM.from_pretrained(ir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
            result = {"wikitext2": evaluate_perplexity(model, tokenizer, DEFAULT_WIKITEXT, 2048,
                                                       WIKITEXT_WINDOWS, progress=False),
                      "zero_shot": evaluate_zero_shot(model, tokenizer, limit=ZERO_SHOT_LIMIT, data_dir=ASSETS)}
            atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")

    def speed(self) -> None:
        result_file = self.path("results", "speed.json")
        if os.path.isfile(result_file):
            return
        irs = {f"{name}_{fmt}": self.ir_dir(name, fmt) for name, fmt in ir_names() if os.path.isdir(self.ir_dir(name, fmt))}
        models, runs = measure_interleaved(irs, prompt_length=128, new_tokens=32, repetitions=self.repetitions,
                                           warmup=1, engine="genai")
        atomic_write_text(result_file, json.dumps({"models": models, "runs": runs}, indent=2) + "\n")

    def report(self) -> None:
        rows = frontier_rows(self)
        results = {"int4_group_size": INT4_GROUP_SIZE, "wikitext_windows": WIKITEXT_WINDOWS,
                   "pytorch_wikitext_windows": self.pytorch_windows,
                   "zero_shot_limit": ZERO_SHOT_LIMIT, "repetitions": self.repetitions,
                   "recovery": recovery_summaries(self), "recovery_curves": self.recovery_curves(), "rows": rows,
                   "goals": goals(rows),
                   "pareto_front": [f"{row['model']} {row['format']}" for row in pareto_front(rows)]}
        baseline = best_dense_int4(rows)
        if baseline is not None and "tpot_s" in baseline:
            results["picks"] = {f"TPOT <= {share:g}x best dense int4": f"{row['model']} {row['format']}"
                                for share, row in picks(rows, baseline["tpot_s"]).items()}
        atomic_write_text(os.path.join(HERE, "results", "frontier.json"), json.dumps(results, indent=2) + "\n")
        atomic_write_text(os.path.join(HERE, "results", "frontier.md"), format_table(results) + "\n")
        plot(rows, os.path.join(HERE, "results", "frontier.png"))
        if results["recovery_curves"]:
            plot_curves(results["recovery_curves"], os.path.join(HERE, "results", "frontier_curve.png"))
        print(format_table(results))

    def recovery_curves(self) -> dict[str, Any]:
        """Per pruned model with a curve file: its recovery curve and trend (`recovery_trend`)."""
        curves = {}
        for ratio, goal in GAP_GOALS.items():
            curve_file = self.path("results", f"pruned{ratio}_curve.json")
            if os.path.isfile(curve_file):
                curves[f"pruned{ratio}"] = recovery_trend(read_json(curve_file), goal)
        return curves


def recovery_summaries(frontier: Frontier) -> dict[str, Any]:
    """Per recovered model: tokens, data hash, last logged loss, training text."""
    summaries = {}
    for ratio in RECORDS:
        record_file = os.path.join(frontier.model_dir(f"pruned{ratio}_recovered"), "pruning_record.json")
        if os.path.isfile(record_file):
            recovery = read_json(record_file)["recovery"]
            summaries[f"pruned{ratio}"] = {key: recovery[key] for key in ("tokens_seen", "steps", "data_sha256")}
            summaries[f"pruned{ratio}"]["dataset"] = "local C4 sample (sample_c4-rp1 + rp2, train documents)"
            summaries[f"pruned{ratio}"]["final_loss"] = recovery["loss_curve"][-1]["loss"]
    return summaries


def gap_closed(dense: float, pruned: float, recovered: float) -> float:
    """The share of the pruned model's perplexity gap to dense that recovery closed (the goals' measure)."""
    return (pruned - recovered) / (pruned - dense)


def recovery_trend(curve: dict[str, Any], goal: float) -> dict[str, Any]:
    """The share of the WikiText-2 gap closed at each measured budget (perplexity, as the goals), and over the points
    after training began the least-squares line `share = intercept + slope * ln(tokens)` with the tokens at which it
    reaches `goal` (None while there are fewer than two points or the line does not rise)."""
    dense, pruned = curve["dense"], curve["curve"]["0"]
    points = [{"tokens": int(step) * curve["tokens_per_step"], "wikitext2": value,
               "gap_closed": gap_closed(dense, pruned, value)}
              for step, value in sorted(curve["curve"].items(), key=lambda item: int(item[0])) if int(step) > 0]
    trend = {"windows": curve["windows"], "dense": dense, "pruned": pruned, "points": points, "goal": goal,
             "fit": None, "tokens_for_goal": None}
    if len(points) >= 2:
        xs, ys = [math.log(point["tokens"]) for point in points], [point["gap_closed"] for point in points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        if spread > 0:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
            intercept = mean_y - slope * mean_x
            trend["fit"] = {"intercept": intercept, "slope_per_doubling": slope * math.log(2)}
            if slope > 0:
                trend["tokens_for_goal"] = math.exp((goal - intercept) / slope)
    return trend


def frontier_rows(frontier: Frontier) -> list[dict[str, Any]]:
    speed = read_json(frontier.path("results", "speed.json"))["models"] if os.path.isfile(
        frontier.path("results", "speed.json")) else {}
    rows = []
    for name, weight_format in [(name, "pytorch") for name in model_names()] + ir_names():
        result_file = frontier.path("results", f"{name}_{weight_format}.json")
        timing = speed.get(f"{name}_{weight_format}")
        if not os.path.isfile(result_file) and not timing:
            continue
        result = read_json(result_file) if os.path.isfile(result_file) else {}
        row = {"model": name, "format": weight_format}
        if "wikitext2" in result:
            row["wikitext2"] = result["wikitext2"]["perplexity"]
        if "zero_shot" in result:
            row["zero_shot_mean"] = result["zero_shot"]["mean"]
            row["zero_shot_stderr"] = result["zero_shot"]["mean_stderr"]
        if timing:
            row.update({key: timing[key] for key in ("ttft_s", "tpot_s", "throughput_tokens_per_s", "size_bytes")})
        rows.append(row)
    return with_ratios(rows)


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each IR row's perplexity and TPOT over the best training-free dense int4 IR's (the lower perplexity of plain
    and data-aware int4: the best int4 a user can make without training)."""
    baseline = best_dense_int4(rows)
    for row in rows:
        if baseline is None or row["format"] == "pytorch":
            continue
        row["baseline"] = f"dense {baseline['format']}"
        if "tpot_s" in row and "tpot_s" in baseline:
            row["tpot_vs_dense_int4"] = row["tpot_s"] / baseline["tpot_s"]
        if "wikitext2" in row:  # IRs on the same 40 windows
            row["ppl_vs_dense_int4"] = row["wikitext2"] / baseline["wikitext2"]
    return rows


def best_dense_int4(rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The dense int4 IR row (plain or data-aware) of lowest perplexity, or None."""
    dense_int4 = [row for row in rows if row["model"] == "dense" and row["format"] in ("int4", "int4_awq")
                  and "wikitext2" in row]
    return min(dense_int4, key=lambda row: row["wikitext2"], default=None)


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 26's goals: the share of the PyTorch (fp32) WikiText-2 gap recovery closes; the best int4 IR of each
    recovered pruned model (plain, data-aware or quantization-aware) against the best training-free dense int4 IR,
    in perplexity and TPOT; and, reported whatever it is, against the dense model with the same quantization-aware
    distillation."""
    ppl = {(row["model"], row["format"]): row for row in rows}
    result = {}
    for ratio, target in GAP_GOALS.items():
        keys = [("dense", "pytorch"), (f"pruned{ratio}", "pytorch"), (f"pruned{ratio}_recovered", "pytorch")]
        if all(key in ppl for key in keys):
            closed = gap_closed(*(ppl[key]["wikitext2"] for key in keys))
            result[f"gap_closed_{ratio}"] = {"value": closed, "goal": target, "met": closed >= target}
    for ratio, max_ppl, max_tpot in ((10, 1.10, 0.85), (20, 1.25, 0.75)):
        candidates = [ppl[key] for key in ((f"pruned{ratio}_recovered", "int4"), (f"pruned{ratio}_recovered",
                                                                                 "int4_awq"), (f"pruned{ratio}_qat",
                                                                                               "int4"))
                      if key in ppl and "tpot_vs_dense_int4" in ppl[key] and "ppl_vs_dense_int4" in ppl[key]]
        if not candidates:
            continue
        best = min(candidates, key=lambda row: row["wikitext2"])
        goal = {"ir": f"{best['model']} {best['format']}", "baseline": best["baseline"],
                "ppl_ratio": best["ppl_vs_dense_int4"], "tpot_ratio": best["tpot_vs_dense_int4"],
                "goal": [max_ppl, max_tpot],
                "met": best["ppl_vs_dense_int4"] <= max_ppl and best["tpot_vs_dense_int4"] <= max_tpot}
        qat = ppl.get(("dense_qat", "int4"))
        if qat and "wikitext2" in qat and "tpot_s" in qat and "tpot_s" in best:
            goal["vs_dense_qat"] = {"ppl_ratio": best["wikitext2"] / qat["wikitext2"],
                                    "tpot_ratio": best["tpot_s"] / qat["tpot_s"]}
        result[f"int4_{ratio}"] = goal
    return result


def format_table(results: dict[str, Any]) -> str:
    lines = ["| model | IR | WikiText-2 PPL | zero-shot mean (± se) | TTFT ms | TPOT ms | tokens/s | size MB | "
             "PPL / best dense int4 | TPOT / best dense int4 |", "|" + "---|" * 10]
    for row in results["rows"]:
        def cell(key, scale=1.0, digits=2):
            return f"{row[key] * scale:.{digits}f}" if key in row else "-"
        zero_shot = (f"{100 * row['zero_shot_mean']:.1f} ± {100 * row['zero_shot_stderr']:.1f}"
                     if "zero_shot_mean" in row else "-")
        lines.append(f"| {row['model']} | {row['format']} | {cell('wikitext2')} | {zero_shot} | "
                     f"{cell('ttft_s', 1000, 1)} | {cell('tpot_s', 1000, 2)} | {cell('throughput_tokens_per_s', 1, 1)} | "
                     f"{cell('size_bytes', 1e-6, 1)} | {cell('ppl_vs_dense_int4', 1, 3)} | "
                     f"{cell('tpot_vs_dense_int4', 1, 3)} |")
    lines.append("")
    lines.append("Goals: " + json.dumps(results["goals"]))
    lines.append("Recovery: " + json.dumps(results["recovery"]))
    for name, trend in results.get("recovery_curves", {}).items():
        points = ", ".join(f"{point['tokens']:,} tokens {100 * point['gap_closed']:.1f}%" for point in trend["points"])
        line = f"Recovery curve {name} (WikiText-2, first {trend['windows']} windows, gap closed): {points}"
        if trend["fit"] is not None:
            line += f"; trend +{100 * trend['fit']['slope_per_doubling']:.1f} points per doubling"
        if trend["tokens_for_goal"] is not None:
            line += f", {100 * trend['goal']:.0f}% at about {trend['tokens_for_goal']:,.0f} tokens"
        lines.append(line)
    return "\n".join(lines)


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The IR rows no other row beats in both time per output token and perplexity, fastest first."""
    points = sorted((row for row in rows if "tpot_s" in row and "wikitext2" in row),
                    key=lambda row: (row["tpot_s"], row["wikitext2"]))
    front = []
    for row in points:
        if not front or row["wikitext2"] < front[-1]["wikitext2"]:
            front.append(row)
    return front


def picks(rows: list[dict[str, Any]], baseline_tpot_s: float) -> dict[float, dict[str, Any]]:
    """For each of `LATENCY_BUDGETS` (shares of `baseline_tpot_s`), the IR of lowest perplexity within it (a point of
    the Pareto front); budgets no IR meets are left out."""
    chosen = {}
    for share in LATENCY_BUDGETS:
        within = [row for row in pareto_front(rows) if row["tpot_s"] <= share * baseline_tpot_s]
        if within:
            chosen[share] = min(within, key=lambda row: row["wikitext2"])
    return chosen


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """WikiText-2 perplexity against time per output token, one point per IR, labelled with its size; the Pareto
    front as a line, and for latency budgets of 0.75x, 0.85x and 1x the best dense int4's TPOT, the IR to pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, axis = plt.subplots(figsize=(10, 6.5))
    colours = dict(zip(all_model_names(), plt.get_cmap("tab10").colors))
    markers = {"int8": "o", "int4": "s", "int4_awq": "D"}
    for row in rows:
        if "tpot_s" not in row or "wikitext2" not in row:
            continue
        axis.scatter(row["tpot_s"] * 1000, row["wikitext2"], color=colours[row["model"]], marker=markers[row["format"]],
                     label=f"{row['model']} {row['format']}")
        axis.annotate(f"{row['size_bytes'] / 1e6:.0f} MB", (row["tpot_s"] * 1000, row["wikitext2"]),
                      textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto_front(rows)
    if front:
        axis.plot([row["tpot_s"] * 1000 for row in front], [row["wikitext2"] for row in front], color="grey",
                  linestyle="--", linewidth=1, label="Pareto front")
    baseline = best_dense_int4(rows)
    if baseline is not None and "tpot_s" in baseline:
        for share, row in picks(rows, baseline["tpot_s"]).items():
            budget = share * baseline["tpot_s"]
            axis.axvline(budget * 1000, color="lightgrey", linewidth=0.8)
            axis.annotate(f"pick for <= {budget * 1000:.1f} ms: {row['model']} {row['format']}",
                          (row["tpot_s"] * 1000, row["wikitext2"]), textcoords="offset points", xytext=(8, -14),
                          fontsize=7, arrowprops={"arrowstyle": "->", "color": "grey"})
    axis.set_xlabel("time per output token (ms, openvino-genai, CPU)")
    axis.set_ylabel(f"WikiText-2 perplexity (first {WIKITEXT_WINDOWS} windows of 2048)")
    axis.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, 30, 50 rather than 2 x 10^1
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(plain)
    axis.set_title("SmolLM2-135M: dense vs MultiPruner 10% / 20% IRs (o int8, s int4, D data-aware int4)")
    axis.legend(fontsize=6, ncol=2)
    save_figure(figure, path)


def plot_curves(curves: dict[str, Any], path: str) -> None:
    """The share of the WikiText-2 gap closed against recovery tokens (log axis) per pruned model, its goal and the
    fitted trend drawn on to where it meets the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, axis = plt.subplots(figsize=(8, 5))
    for (name, trend), colour in zip(curves.items(), plt.get_cmap("tab10").colors):
        tokens = [point["tokens"] for point in trend["points"]]
        axis.plot(tokens, [100 * point["gap_closed"] for point in trend["points"]], "o-", color=colour, label=name)
        axis.axhline(100 * trend["goal"], color=colour, linestyle=":", linewidth=1, label=f"{name} goal")
        if trend["fit"] is not None and tokens:
            end = max(tokens[-1], min(trend["tokens_for_goal"] or tokens[-1], 1e9))
            xs = [tokens[0], end]
            axis.plot(xs, [100 * (trend["fit"]["intercept"] + trend["fit"]["slope_per_doubling"] * math.log2(x))
                           for x in xs], "--", color=colour, linewidth=1, label=f"{name} trend")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axis.set_xlabel("recovery tokens (log scale)")
    axis.set_ylabel("WikiText-2 gap to dense closed (%)")
    axis.set_title("SmolLM2-135M: recovery of the MultiPruner 10% / 20% models")
    axis.legend(fontsize=7)
    save_figure(figure, path)


def save_figure(figure, path: str) -> None:
    """Writes `figure` as a PNG at `path` atomically and closes it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def comma_list(parser: argparse.ArgumentParser, option: str, value: str, choices: Any) -> list[str]:
    """The items of a comma-separated option, each one of `choices` (else the parser's usage error)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = sorted(set(items) - set(choices))
    if unknown:
        parser.error(f"unknown {option} {unknown}; choose from {', '.join(choices)}")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="frontier-work", help="folder of models, IRs, checkpoints, results")
    parser.add_argument("--max-tokens", type=int, default=983_040, help="recovery budget per model (tokens)")
    parser.add_argument("--qat-tokens", type=int, default=122_880,
                        help="quantization-aware distillation budget per model, the dense baseline's too (tokens)")
    parser.add_argument("--repetitions", type=int, default=8, help="timed genai runs per IR (after one warm-up)")
    parser.add_argument("--pytorch-windows", type=int, default=WIKITEXT_WINDOWS,
                        help="WikiText-2 windows of 2048 of the PyTorch perplexities (the recovery goals)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--models", default=",".join(all_model_names()),
                        help=f"comma-separated subset of {','.join(all_model_names())}")
    args = parser.parse_args()
    stages, models = comma_list(parser, "--stages", args.stages, STAGES), comma_list(
        parser, "--models", args.models, all_model_names())
    frontier = Frontier(args.workdir, args.max_tokens, args.qat_tokens, args.repetitions, args.pytorch_windows,
                        set(models))
    for stage in STAGES:
        if stage in stages:
            start = time.perf_counter()
            getattr(frontier, stage)()
            print(f"stage {stage}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
