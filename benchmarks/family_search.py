"""A real search on each newly supported family (issue 29, item 5): no pretrained Gemma 2/3, SmolLM3 or OLMo 2
weights are reachable here, so each family gets the largest tiny model whose whole MultiPruner search runs in
minutes on 2 CPU cores, trained on the test text with one attention kept silent (its `o_proj` zero and frozen).

Each family's model has 6 layers, hidden 64, 4 query heads in 2 KV groups of head_dim 16 and an MLP of 256, with
the family's own per-layer kinds (Gemma 2 alternating sliding/full, Gemma 3 five sliding to one full with RoPE bases
1e4 and 1e6, SmolLM3 NoPE in every fourth layer), sliding windows of 16 in 64-token sequences. The script checks that
the search removes the silent attention first, leaving the calibration perplexity exactly where it was, then runs the
whole MultiPruner search (blocks, MLP channels, KV groups) to `--ratio` and checks that the pruned model's cached
generation equals its uncached one. It reports the search's steps, perplexities and seconds per family (written
after each family; a run cut short continues where it stopped when started again with the same settings).

    python benchmarks/family_search.py --output benchmarks/results/family_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testing_utils import CONFIGS, make_text, make_tokenizer, train_briefly  # noqa: E402

from optimum_multipruner import MultiPruner, MultiPrunerConfig  # noqa: E402
from optimum_multipruner.data import build_calibration_sets  # noqa: E402
from optimum_multipruner.utils import atomic_write_text  # noqa: E402

FAMILIES = ("gemma2", "gemma3_text", "smollm3", "olmo2")
SILENT_ATTENTION = 2
SIZE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, sliding_window=16)
PER_LAYER = ("layer_types", "no_rope_layers", "query_pre_attn_scalar")  # recomputed by the family for the new size


def make_family_model(family: str, seed: int = 0):
    """The family's tiny test config grown to `SIZE`, its per-layer kinds from the family's own defaults."""
    tiny = CONFIGS[family]()
    values = {k: v for k, v in tiny.to_dict().items() if k not in ("model_type", "architectures", *PER_LAYER)}
    # a family without sliding windows gets none: transformers' cache would read a stray `sliding_window` as one
    values.update({k: v for k, v in SIZE.items() if k != "sliding_window" or k in values})
    if "query_pre_attn_scalar" in tiny.to_dict():
        values["query_pre_attn_scalar"] = SIZE["head_dim"]
    config = type(tiny)(**values)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def run_family(family: str, args: argparse.Namespace, calibration: str, tokenizer) -> dict:
    config = MultiPrunerConfig(
        target_ratio=args.ratio, calibration_dataset=calibration, num_calibration_samples_block=args.rows,
        num_calibration_samples_width=args.rows // 2, sequence_length=64, batch_size=8, mlp_channel_group_size=64,
        width_alignment=32,
    )
    sequences = build_calibration_sets(config, tokenizer, tokenizer.vocab_size)["block"]
    model = make_family_model(family)
    silent = model.get_submodule(f"model.layers.{SILENT_ATTENTION}.self_attn.o_proj").weight
    with torch.no_grad():
        silent.zero_()
    silent.requires_grad_(False)
    start = time.perf_counter()
    train_briefly(model, tokenizer, steps=args.train_steps, sequences=sequences, batch_size=16, lr=5e-3, anneal=True)
    trained = time.perf_counter() - start

    pruner = MultiPruner(model, tokenizer)
    start = time.perf_counter()
    pruned = pruner.prune(config, progress=False)
    searched = time.perf_counter() - start
    record = pruner.record
    first = record.steps[0]
    ids = torch.tensor([tokenizer(make_text(1, seed=5)[0]).input_ids * 3])[:, :48]  # longer than the window of 16
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    cached = pruned.generate(ids, use_cache=True, **kwargs)
    uncached = pruned.generate(ids, use_cache=False, **kwargs)
    return {
        "family": family,
        "dense_parameters": record.dense_parameters,
        "parameters": sum(p.numel() for p in pruned.parameters()),
        "layer_types": getattr(model.config, "layer_types", None),
        "no_rope_layers": getattr(model.config, "no_rope_layers", None),
        "train_seconds": round(trained, 1),
        "search_seconds": round(searched, 1),
        "start_perplexity": record.start_perplexity,
        "first_step": [first.action, first.layer, first.perplexity],
        "silent_attention_removed_first": (first.action, first.layer) == ("remove_attention", SILENT_ATTENTION),
        "first_step_keeps_perplexity": abs(first.perplexity / record.start_perplexity["block"] - 1) < 1e-6,
        "steps": [[s.stage, s.action, s.layer, s.kept, round(s.perplexity, 4), round(s.ratio, 4)]
                  for s in record.steps],
        "structure": record.structure.to_dict(),
        "cached_generation_equals_uncached": torch.equal(cached, uncached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=sorted(CONFIGS))
    parser.add_argument("--ratio", type=float, default=0.15, help="share of all parameters the search removes")
    parser.add_argument("--rows", type=int, default=96, help="calibration rows of the block set")
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    tokenizer = make_tokenizer()
    settings = {k: v for k, v in vars(args).items() if k not in ("families", "output")}
    results = []
    if os.path.exists(args.output):  # a run cut short continues: families already measured with these settings stay
        with open(args.output, encoding="utf-8") as handle:
            previous = json.load(handle)
        if previous["settings"] == settings:
            results = [r for r in previous["results"] if r["family"] in args.families]
    done = {r["family"] for r in results}
    with tempfile.TemporaryDirectory() as tmp:
        calibration = os.path.join(tmp, "calibration.txt")
        with open(calibration, "w", encoding="utf-8") as handle:
            handle.write("\n".join(make_text(2000, seed=1)))
        for family in [family for family in args.families if family not in done]:
            results.append(run_family(family, args, calibration, tokenizer))
            print(json.dumps(results[-1]), flush=True)
            atomic_write_text(args.output, json.dumps({"settings": settings, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
