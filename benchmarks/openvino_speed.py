"""OpenVINO speed of a MultiPruner-shaped pruned model against its dense original, at Llama-2-7B proportions.

By default the script builds a random-weight Llama of Llama-2-7B's proportions scaled to fit a small CPU machine
(hidden 2048, 20 layers, 16 heads of 128 (MHA), MLP 5504 = 11008 / 2, vocab 32000, untied lm_head: 1.14B
parameters), prunes 20% of ALL its parameters with a fixed structure shaped like the official MultiPruner
Llama-2-7B `ratio_22` result (see `OFFICIAL_LIKE_*` below), exports both models to OpenVINO and measures them with
`optimum_multipruner.benchmark` (both compiled once, runs interleaved). With random weights a search would choose
noise, so the structure is applied directly (`apply_structure` + `to_pruned_model`); speed does not depend on the
weights' values.

It also prints the physical limit of decode: a decode step multiplies the activations by every linear weight
(lm_head included; the embedding is a lookup of one row), so on a bandwidth-bound CPU the best pruned/dense decode
latency ratio is the ratio of those weight bytes, read from each IR's MatMul weight constants (left out: the f16 KV
cache read per step, 25 MiB for the dense model here at a 160-token context, vs 1 GiB of int8 weights).

    python benchmarks/openvino_speed.py --weight-formats int8 fp32
    python benchmarks/openvino_speed.py --pruned PRUNED_DIR --dense DENSE_DIR --output results/smollm2_speed

`--pruned/--dense` take OpenVINO IR directories (used as they are, whatever `--weight-formats` says) or PyTorch
checkpoints (exported in each weight format). Checkpoints and IRs are written under `--work-dir` (default
`<output>/models`) and reused when already there; delete it to rebuild.
Results: `<output>/<weight format>.json` and `.png` (`<weight format>-genai.*` with `--engine genai`).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from optimum_multipruner_constants import BENCHMARK_ENGINES, WEIGHT_FORMATS

from optimum_multipruner.benchmark import benchmark, format_table, plot_ratios, save_results

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from openvino_irs import matmul_weight_bytes, openvino_dir  # noqa: E402

if TYPE_CHECKING:
    from transformers import LlamaConfig

    from optimum_multipruner.structure import PrunedStructure


# The official Llama-2-7B ratio_22 result (44:52:4, reference/algorithms.md §2.8) removed 9 attention blocks (layers
# 25, 27, 24, 23, 21, 29, 28, 18, 8, in that order) and the MLP block of layer 8, cut MLP widths in steps of 1024
# (down to 53-63% of 11008 in some layers) and removed 1-6 of 32 heads in some layers. Scaled to 20 layers and a 20%
# target with the same stage rule (each stage removes units until its cumulative target T*0.44, T*0.96, T is reached):
OFFICIAL_LIKE_ATTENTION_REMOVED = (16, 17, 15, 14)  # 25, 27, 24, 23 scaled by 20/32: blocks reach 8.83% >= 8.8%
OFFICIAL_LIKE_MLP_REMOVED = (5,)  # layer 8 scaled
OFFICIAL_LIKE_MLP_GROUPS_REMOVED = (0, 1, 2, 2, 2, 0, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 2, 2, 1, 0)  # 38 x 512: 19.29%
OFFICIAL_LIKE_HEADS_REMOVED = {2: 1, 4: 1, 6: 1, 8: 1, 10: 1, 12: 1, 18: 2}  # 8 heads: 20.02%
MLP_GROUP_SIZE = 512
RESULTS_DIR = os.path.join("results", "openvino_speed")


def scaled_llama2_config() -> LlamaConfig:
    """Llama-2-7B's proportions at 1.14B parameters: half the width, 20 of 32 layers, same head_dim and vocab."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=128,
        vocab_size=32000,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def official_like_structure(config: LlamaConfig) -> PrunedStructure:
    """The fixed `PrunedStructure` above, for `scaled_llama2_config()`."""
    from optimum_multipruner.structure import PrunedStructure

    heads = [
        0 if layer in OFFICIAL_LIKE_ATTENTION_REMOVED
        else config.num_attention_heads - OFFICIAL_LIKE_HEADS_REMOVED.get(layer, 0)
        for layer in range(config.num_hidden_layers)
    ]
    widths = [
        0 if layer in OFFICIAL_LIKE_MLP_REMOVED else config.intermediate_size - MLP_GROUP_SIZE * groups
        for layer, groups in enumerate(OFFICIAL_LIKE_MLP_GROUPS_REMOVED)
    ]
    return PrunedStructure(heads, list(heads), widths)  # MHA: one KV head per query head


def build_checkpoints(work_dir: str, seed: int) -> tuple[str, str]:
    """Save the random dense model and its pruned copy under `work_dir` (reused when present); return both dirs."""
    pruned_dir, dense_dir = os.path.join(work_dir, "pruned"), os.path.join(work_dir, "dense")
    if all(os.path.isfile(os.path.join(path, "config.json")) for path in (pruned_dir, dense_dir)):
        print(f"Reusing the checkpoints in {work_dir}")
        return pruned_dir, dense_dir
    import torch
    from transformers import LlamaForCausalLM

    from optimum_multipruner.architectures import get_adapter
    from optimum_multipruner.modeling import to_pruned_model
    from optimum_multipruner.surgery import apply_structure, count_parameters

    start = time.perf_counter()
    config = scaled_llama2_config()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    dense_parameters = count_parameters(model)
    model.save_pretrained(dense_dir)
    adapter = get_adapter(model)
    structure = official_like_structure(config)
    apply_structure(model, adapter, structure)
    to_pruned_model(model, adapter, structure)
    pruned_parameters = count_parameters(model)
    model.save_pretrained(pruned_dir)
    del model
    gc.collect()
    print(
        f"Built and saved in {time.perf_counter() - start:.0f} s: dense {dense_parameters:,} parameters, pruned "
        f"{pruned_parameters:,} ({100 * (1 - pruned_parameters / dense_parameters):.2f}% removed)\n"
        f"  structure: {structure.to_dict()}"
    )
    return pruned_dir, dense_dir


def decode_limit_text(results: dict[str, Any]) -> str:
    """The physical decode limit next to the measured decode ratio."""
    weights = results["decode_weight_bytes"]
    limit = weights["pruned"]["bytes"] / weights["dense"]["bytes"]
    measured = results["ratios"]["decode_s_per_token"]
    return (
        f"decode weight bytes per token (all MatMul weights incl. lm_head; embedding lookup excluded): "
        f"pruned {weights['pruned']['bytes'] / 2**20:,.1f} MiB {weights['pruned']['weight_constants_by_type']}, "
        f"dense {weights['dense']['bytes'] / 2**20:,.1f} MiB {weights['dense']['weight_constants_by_type']}\n"
        f"physical limit of decode latency pruned/dense: {limit:.3f} (speed-up <= {1 / limit:.2f}x); measured "
        f"{measured:.3f} (paired {results['paired_ratios']['decode_s_per_token']:.3f}), i.e. "
        f"{(1 - measured) / (1 - limit):.0%} of the possible gain"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruned", help="pruned IR or checkpoint dir (with --dense) instead of the built model")
    parser.add_argument("--dense", help="dense IR or checkpoint dir (with --pruned)")
    parser.add_argument("--weight-formats", nargs="+", choices=WEIGHT_FORMATS, default=["int8"],
                        help="export and benchmark each, in this order (default int8)")
    parser.add_argument("--output", default=RESULTS_DIR, help=f"results directory (default {RESULTS_DIR})")
    parser.add_argument("--work-dir", help="checkpoints and IRs (default <output>/models)")
    parser.add_argument("--prompt-length", type=int, default=128, help="prefill tokens (default 128)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per run (default 32)")
    parser.add_argument("--repetitions", type=int, default=6, help="measured runs per model (default 6)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per model first (default 1)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    parser.add_argument("--engine", choices=BENCHMARK_ENGINES, default=BENCHMARK_ENGINES[0],
                        help="openvino: raw runtime prefill/decode; genai: LLMPipeline TTFT/TPOT (default openvino)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts")
    args = parser.parse_args()
    if (args.pruned is None) != (args.dense is None):
        parser.error("--pruned and --dense go together")
    work_dir = args.work_dir or os.path.join(args.output, "models")
    for directory in (args.output, work_dir):
        os.makedirs(directory, exist_ok=True)
    if args.pruned:
        pruned, dense = args.pruned, args.dense
    else:
        pruned, dense = build_checkpoints(work_dir, args.seed)
    for weight_format in args.weight_formats:
        irs = {name: openvino_dir(source, name, weight_format, work_dir)
               for name, source in (("pruned", pruned), ("dense", dense))}
        start = time.perf_counter()
        results = benchmark(irs["pruned"], irs["dense"], device=args.device, prompt_length=args.prompt_length,
                            new_tokens=args.new_tokens, repetitions=args.repetitions, warmup=args.warmup,
                            seed=args.seed, engine=args.engine)
        results["weight_format"] = weight_format
        results["decode_weight_bytes"] = {name: matmul_weight_bytes(path) for name, path in irs.items()}
        print(f"\n{weight_format}: benchmarked in {time.perf_counter() - start:.0f} s")
        print(format_table(results))
        if args.engine == "openvino":
            print(decode_limit_text(results))
        name = weight_format if args.engine == "openvino" else f"{weight_format}-{args.engine}"
        save_results(results, os.path.join(args.output, f"{name}.json"))
        plot_ratios(results, os.path.join(args.output, f"{name}.png"))


if __name__ == "__main__":
    main()
