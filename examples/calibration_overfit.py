"""Do the searches of `compare_methods.py` overfit their calibration text? Measure it on the models it kept.

For every checkpoint in `--models-dir` (written by `compare_methods.py --models-dir`), the perplexity on:

* the search's own calibration sequences (the seeded draw every method used: BlockPruner's rows, which are also
  MultiPruner's width rows and the rows layer removal measured block influence on);
* MultiPruner's block-stage rows (the next rows of the same seeded stream);
* held-out Alpaca rows that no search saw (a separately seeded draw), cut to the calibration length and, to separate
  the effect of context length from that of the domain, to the WikiText-2 window length.

A search that generalises keeps the held-out perplexity close to its calibration perplexity; one that overfits its
calibration text shows a low calibration perplexity and a high held-out one. WikiText-2 perplexity is taken from
`--results` (the comparison's `results.json`) when given.

    python examples/calibration_overfit.py --models-dir results/compare_models --results results/compare/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import optimum_multipruner  # noqa: F401  (registers the pruned model types)
from optimum_multipruner.data import build_sequences, load_text_rows, sample_rows
from optimum_multipruner.nll import perplexity, reference_ignore_index
from optimum_multipruner.utils import atomic_write_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_methods import run_name  # noqa: E402
from smollm2 import LOCAL_ALPACA, prepare_smollm2  # noqa: E402


def calibration_sets(
    tokenizer, rows_per_set: int, sequence_length: int, held_out_rows: int, long_length: int, seed: int = 42
) -> dict[str, torch.Tensor]:
    """The search's two seeded row sets (as `MultiPruner` draws them) and a disjoint held-out set."""
    rows = load_text_rows(LOCAL_ALPACA)
    rng = random.Random(seed)
    width_rows = sample_rows(rows, rows_per_set, rng, LOCAL_ALPACA)
    block_rows = sample_rows(rows, rows_per_set, rng, LOCAL_ALPACA)
    seen = set(width_rows) | set(block_rows)
    unseen = [row for row in rows if row not in seen]
    held_out = sample_rows(unseen, held_out_rows, random.Random(seed + 1), LOCAL_ALPACA)
    return {
        "calibration": build_sequences(tokenizer, width_rows, sequence_length),
        "mp_block_rows": build_sequences(tokenizer, block_rows, sequence_length),
        "held_out": build_sequences(tokenizer, held_out, sequence_length),
        "held_out_long": build_sequences(tokenizer, held_out, long_length),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", required=True, help="folder of checkpoints from compare_methods.py")
    parser.add_argument("--results", help="the comparison's results.json (for its settings and WikiText-2 column)")
    parser.add_argument("--calibration-rows", type=int, default=2, help="as in the comparison")
    parser.add_argument("--sequence-length", type=int, default=64, help="as in the comparison")
    parser.add_argument("--held-out-rows", type=int, default=64, help="unseen Alpaca rows")
    parser.add_argument("--long-length", type=int, default=256, help="the longer held-out length (WikiText window)")
    parser.add_argument("--output", help="write the table as JSON here")
    args = parser.parse_args()

    names = sorted(
        (name for name in os.listdir(args.models_dir)
         if os.path.isfile(os.path.join(args.models_dir, name, "model.safetensors"))),  # not the OpenVINO IRs
        key=lambda name: (name != "dense", name.rsplit("_", 1)[-1], name),
    )
    if not names:
        parser.error(f"{args.models_dir} holds no checkpoints; run compare_methods.py with --models-dir first.")
    wikitext = {}
    if args.results:
        with open(args.results, encoding="utf-8") as handle:
            for result in json.load(handle)["results"]:
                wikitext[run_name(result["method"], result["target_ratio"])] = result["perplexity"]["perplexity"]
    tokenizer = AutoTokenizer.from_pretrained(prepare_smollm2())
    ignore_index = reference_ignore_index(tokenizer)
    sets = calibration_sets(
        tokenizer, args.calibration_rows, args.sequence_length, args.held_out_rows, args.long_length
    )
    print("tokens per set:", {name: sequences.numel() for name, sequences in sets.items()})
    table = {}
    print(f"{'model':<24} {'calibration':>11} {'MP block rows':>13} {'held-out':>9} {'held-out long':>13} "
          f"{'WikiText-2':>10}")
    for name in names:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(args.models_dir, name), dtype=torch.float32).eval()
        with torch.inference_mode():
            row = {key: perplexity(model, sequences, 4, ignore_index) for key, sequences in sets.items()}
        row["wikitext2"] = wikitext.get(name)
        table[name] = row
        wiki = f"{row['wikitext2']:10.2f}" if row["wikitext2"] is not None else f"{'-':>10}"
        print(f"{name:<24} {row['calibration']:11.2f} {row['mp_block_rows']:13.2f} {row['held_out']:9.2f} "
              f"{row['held_out_long']:13.2f} {wiki}", flush=True)
    if args.output:
        atomic_write_text(args.output, json.dumps({"settings": vars(args), "perplexity": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
