"""Do the searches of `compare_methods.py` overfit their calibration text? Measure it on the models it kept.

For every checkpoint of a comparison (`<work-dir>/models`, written by `compare_methods.py --work-dir`), the perplexity
on:

* calibration set 1, the text every method calibrated on (MultiPruner's width set, BlockPruner's set, the text layer
  removal measured block influence on);
* calibration set 2 (MultiPruner's block set: for the other methods, unseen text);
* held-out Alpaca text of the same length (rows in neither set; see `smollm2.calibration_text`), and the same rows
  cut to the WikiText-2 window length, to separate the effect of context length from that of the domain.

A search that generalises keeps the held-out perplexity close to its calibration perplexity; one that overfits its
calibration text shows a low calibration perplexity and a high held-out one. The comparison measures the first three
itself (its `runs/<run>.json`, reused here); WikiText-2 comes from its `results.json` when given.

    python examples/calibration_overfit.py --work-dir /root/runs/quality \
        --results benchmarks/results/smollm2/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import optimum_multipruner  # noqa: F401  (registers the pruned model types)
from optimum_multipruner.nll import perplexity, reference_ignore_index
from optimum_multipruner.utils import atomic_write_text, read_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2 import calibration_text, prepare_smollm2  # noqa: E402

COLUMNS = {
    "first": "calibration set 1",
    "second": "calibration set 2 (MP block)",
    "held_out": "held-out",
    "held_out_long": "held-out, long windows",
    "wikitext2": "WikiText-2",
}


@torch.no_grad()
def calibration_perplexities(model, text: dict[str, torch.Tensor], tokenizer) -> dict[str, float]:
    """Perplexity of `model` on each text of `smollm2.calibration_text` (batch 1, the reference's `ignore_index`)."""
    ignore_index = reference_ignore_index(tokenizer)
    return {name: perplexity(model, sequences, 1, ignore_index) for name, sequences in text.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="the --work-dir of compare_methods.py")
    parser.add_argument("--results", help="the comparison's results.json (for its WikiText-2 column)")
    parser.add_argument("--long-length", type=int, help="the longer held-out length (default: the WikiText window)")
    parser.add_argument("--recompute", action="store_true", help="measure again what the comparison measured")
    parser.add_argument("--output", help="write the table as JSON here (default <work-dir>/calibration_overfit.json)")
    args = parser.parse_args()

    settings_file = os.path.join(args.work_dir, "settings.json")
    models = os.path.join(args.work_dir, "models")
    if not os.path.isfile(settings_file) or not os.path.isdir(models):
        parser.error(f"{args.work_dir} is not a compare_methods.py work folder (no settings.json or models/).")
    settings = read_json(settings_file)
    names = sorted(
        (name for name in os.listdir(models) if os.path.isfile(os.path.join(models, name, "model.safetensors"))),
        key=lambda name: (name != "dense", -int(name.rsplit("_", 1)[-1]) if name != "dense" else 0, name),
    )
    if not names:
        parser.error(f"{models} holds no checkpoints yet.")
    wikitext = {}
    if args.results:
        for row in read_json(args.results)["rows"]:
            if "perplexity" in row:
                wikitext[row["run"]] = row["perplexity"]["perplexity"]
    tokenizer = AutoTokenizer.from_pretrained(prepare_smollm2())
    calibration = settings["calibration"]
    long_length = args.long_length or settings["wikitext2"]["sequence_length"]
    text = calibration_text(tokenizer, calibration["rows_per_set"], calibration["sequence_length"], calibration["seed"],
                            long_length=long_length)
    long_text = {"held_out_long": text.pop("held_out_long")}
    print("tokens per text:", {name: tuple(sequences.shape) for name, sequences in {**text, **long_text}.items()})
    print("| model | " + " | ".join(COLUMNS.values()) + " | held-out / set 1 |")
    print("|" + "---|" * (len(COLUMNS) + 2))
    table = {}
    for name in names:
        state_file = os.path.join(args.work_dir, "runs", name + ".json")
        measured = read_json(state_file).get("calibration") if os.path.isfile(state_file) else None
        model = AutoModelForCausalLM.from_pretrained(os.path.join(models, name), dtype=torch.float32).eval()
        row = dict(measured) if measured and not args.recompute else calibration_perplexities(model, text, tokenizer)
        row.update(calibration_perplexities(model, long_text, tokenizer))
        row["wikitext2"] = wikitext.get(name)
        table[name] = row
        cells = ["-" if row[key] is None else f"{row[key]:.2f}" for key in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + f" | {row['held_out'] / row['first']:.3f} |", flush=True)
    output = args.output or os.path.join(args.work_dir, "calibration_overfit.json")
    report = {"settings": settings, "long_length": long_length, "columns": COLUMNS, "perplexity": table}
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
