"""Plain vs accelerated greedy block search on the real SmolLM2-135M model, in one run.

Both searches run the same BlockPruner configuration on the same calibration sequences; the script checks that they
remove the same blocks with the same perplexities and reports the work each did, in full-forward equivalents (one
forward pass of the whole model over the whole calibration set; noise-free) and in wall time (noisy on shared CPUs).

    python benchmarks/search_speed.py --steps 6 --output results/search_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import DEFAULT_CALIBRATION, load_smollm2  # noqa: E402

from optimum_multipruner import MultiPruner, MultiPrunerConfig  # noqa: E402
from optimum_multipruner.utils import atomic_write_text  # noqa: E402



def run(accelerated: bool, args: argparse.Namespace) -> dict:
    model, tokenizer = load_smollm2()
    config = MultiPrunerConfig.blockpruner(
        target_ratio=0.5,
        max_steps=args.steps,
        calibration_dataset=args.calibration,
        num_calibration_samples_block=args.rows,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        accelerated_search=accelerated,
    )
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(config, progress=args.progress)
    record = pruner.record
    return {
        "mode": "accelerated" if accelerated else "plain",
        "steps": [[s.action, s.layer, s.perplexity, s.ratio] for s in record.steps],
        **record.search_stats["block"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=8, help="Alpaca calibration rows")
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calibration", default=DEFAULT_CALIBRATION)
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    plain, fast = run(False, args), run(True, args)
    same = [s[:2] for s in plain["steps"]] == [s[:2] for s in fast["steps"]] and all(
        abs(a[2] - b[2]) <= 1e-6 * b[2] for a, b in zip(fast["steps"], plain["steps"])
    )
    print(f"\nBlock search on SmolLM2-135M: {args.steps} steps, {args.rows} Alpaca rows, seq {args.sequence_length}")
    print(f"{'mode':<12} {'candidates':>10} {'stopped early':>13} {'full fwd equiv.':>15} {'wall s':>8}")
    for result in (plain, fast):
        print(
            f"{result['mode']:<12} {result['candidates_started']:>10} {result['candidates_stopped_early']:>13} "
            f"{result['full_forward_equivalents']:>15.1f} {result['seconds']:>8.1f}"
        )
    print(
        f"accelerated / plain: work x{fast['full_forward_equivalents'] / plain['full_forward_equivalents']:.3f}, "
        f"wall time x{fast['seconds'] / plain['seconds']:.3f}; same choices and perplexities: {same}"
    )
    print("removed:", ", ".join(f"{a}[{layer}]" for a, layer, *_ in fast["steps"]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps({"settings": vars(args), "plain": plain, "accelerated": fast,
                                                   "same_choices": same}, indent=2) + "\n")
    if not same:
        raise SystemExit("The accelerated search made different choices than the plain search.")


if __name__ == "__main__":
    main()
