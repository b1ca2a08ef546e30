"""Training-free compensation of a pruned model, measured (issue 20, item 2): the least-squares refit of the kept
input columns of every narrowed `o_proj` / `down_proj` (`optimum_multipruner/compensation.py`: ridge toward the
sliced weights, target the dense sub-block's output on the pruned model's own input, layer by layer), which the issue
keeps only if it lowers held-out perplexity both in the calibration domain and out of it, at 10% and at 20%.

For each results-table record (MultiPruner 44:52:4 at 10% and 20% of SmolLM2-135M), the dense model is pruned with
`MultiPruner(model, tokenizer).apply(record, compensation=CompensationConfig(alpha=alpha))`, once without compensation
and once per ridge strength `alpha` (relative to the mean diagonal of X^T X). The calibration text is the record's
own: both its calibration sets (its `config`: Alpaca rows drawn as the search drew them, 40 rows per set cut into
512-token sequences: 9 sequences, 4,608 tokens per set, 9,216 in all). Measured: held-out Alpaca perplexity
(`examples/smollm2.py` `calibration_text(...)["held_out"]`: rows outside both calibration sets, as many 512-token
sequences as one set) and WikiText-2 perplexity (local test split, windows of 2048, the first `--wikitext-windows`).
fp32, one thread. The report is written after every configuration; `--resume` continues one with the same settings
(and adds the `--alphas` it lacks).

    nice -n 10 python benchmarks/compensation.py --output benchmarks/results/compensation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import LOCAL_WIKITEXT, calibration_text, load_smollm2  # noqa: E402

from optimum_multipruner import CompensationConfig, MultiPruner  # noqa: E402
from optimum_multipruner.data import build_calibration_sets  # noqa: E402
from optimum_multipruner.evaluation import evaluate_perplexity  # noqa: E402
from optimum_multipruner.nll import perplexity, reference_ignore_index  # noqa: E402
from optimum_multipruner.utils import atomic_write_text, read_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RECORDS = {
    "10%": os.path.join(RESULTS, "smollm2", "multipruner_44_52_4_10", "pruning_record.json"),
    "20%": os.path.join(RESULTS, "smollm2", "multipruner_44_52_4_20", "pruning_record.json"),
}
UNCOMPENSATED = "none"


def measure(model: nn.Module, tokenizer, held_out: torch.Tensor, wikitext_windows: int) -> dict[str, float]:
    """Held-out Alpaca and WikiText-2 perplexity."""
    alpaca = perplexity(model, held_out, ignore_index=reference_ignore_index(tokenizer))
    wikitext = evaluate_perplexity(model, tokenizer, LOCAL_WIKITEXT, 2048, max_windows=wikitext_windows,
                                   progress=False)["perplexity"]
    return {"alpaca_held_out": alpaca, "wikitext2": wikitext}


def run_configuration(record_path: str, alpha: Optional[float], wikitext_windows: int) -> dict[str, Any]:
    """Prune the dense model to the record, compensate with `alpha` (None: not at all) and measure it."""
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    pruner = MultiPruner(model, tokenizer)
    pruner.apply(record_path, compensation=None if alpha is None else CompensationConfig(alpha=alpha))
    config = pruner.record.config
    calibration = build_calibration_sets(config, tokenizer, model.get_input_embeddings().num_embeddings)
    text = calibration_text(tokenizer, config.num_calibration_samples_width, config.sequence_length, config.seed,
                            config.calibration_dataset)
    if not (torch.equal(text["first"], calibration["width"]) and torch.equal(text["second"], calibration["block"])):
        raise RuntimeError("calibration_text does not draw the record's calibration sets; the held-out rows are wrong.")
    result: dict[str, Any] = {"alpha": alpha, "compensation": pruner.record.compensation}
    result.update(measure(model, tokenizer, text["held_out"], wikitext_windows))
    result["seconds"] = time.perf_counter() - start
    return result


def decide(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The issue's rule: keep compensation only if one alpha lowers both perplexities at every ratio."""
    metrics = ("alpaca_held_out", "wikitext2")
    per_alpha = {}
    for label in next(iter(results.values())):
        if label == UNCOMPENSATED:
            continue
        changes = {ratio: {m: runs[label][m] / runs[UNCOMPENSATED][m] - 1 for m in metrics}
                   for ratio, runs in results.items()}
        flat = [change for row in changes.values() for change in row.values()]
        per_alpha[label] = {"relative_change": changes, "lowers_all": all(change < 0 for change in flat),
                            "mean_log_ratio": sum(map(math.log1p, flat)) / len(flat)}
    passing = [label for label, row in per_alpha.items() if row["lowers_all"]]
    best = min(passing or per_alpha, key=lambda label: per_alpha[label]["mean_log_ratio"])
    return {"per_alpha": per_alpha, "best_alpha": best, "keep": bool(passing)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(RESULTS, "compensation.json"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1],
                        help="ridge strengths, relative to the mean diagonal of X^T X")
    parser.add_argument("--ratios", nargs="+", choices=sorted(RECORDS), default=sorted(RECORDS))
    parser.add_argument("--wikitext-windows", type=int, default=10, help="first windows of 2048 tokens")
    parser.add_argument("--threads", type=int, default=1)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue a report made with the same settings, adding any new --alphas")
    group.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = {"records": {r: os.path.relpath(RECORDS[r], os.path.dirname(RESULTS)) for r in args.ratios},
                "alphas": args.alphas, "wikitext_windows": args.wikitext_windows, "wikitext_sequence_length": 2048,
                "threads": args.threads, "dtype": "float32", "torch": torch.__version__}
    report: dict[str, Any] = {"settings": settings, "results": {}}
    if os.path.exists(args.output):
        if args.resume:
            report = read_json(args.output)
            made = report["settings"]
            if {**made, "alphas": args.alphas} != settings:
                raise SystemExit(f"{args.output} was made with other settings ({made}); use --overwrite.")
            made["alphas"] = sorted(set(made["alphas"]) | set(args.alphas))
        elif not args.overwrite:
            raise SystemExit(f"{args.output} exists; pass --resume to continue it or --overwrite to replace it.")
    labels = {UNCOMPENSATED: None, **{f"{alpha:g}": alpha for alpha in args.alphas}}
    for ratio in args.ratios:
        for label, alpha in labels.items():
            runs = report["results"].setdefault(ratio, {})
            if label in runs:
                continue
            runs[label] = run_configuration(RECORDS[ratio], alpha, args.wikitext_windows)
            print(f"{ratio} alpha={label}: Alpaca held-out {runs[label]['alpaca_held_out']:.3f}, "
                  f"WikiText-2 {runs[label]['wikitext2']:.3f} ({runs[label]['seconds']:.0f} s)", flush=True)
            atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    report["decision"] = decide(report["results"])
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["decision"], indent=2))


if __name__ == "__main__":
    main()
