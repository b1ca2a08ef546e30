"""GPU check of the search on a ~1B random Llama-architecture model in bf16 (no Hub; a few minutes on one H200).

Checks, each a row of the summary table (the exit code is 1 if any fails):

* **plain vs accelerated**: the plain search (a whole decoder forward per candidate) and the accelerated one (cached
  hidden states, early stopping) remove the same units, in the same order;
* **two GPUs** (when there are two): the model dispatched by accelerate over both (half the layers on each, the head
  on the second) gives the same record as on one GPU;
* **fp32 apply**: the bf16 record applied to the fp32 copy of the same dense weights keeps the same structure and the
  same channels and heads (every pruned fp32 weight equals the pruned bf16 weight, upcast);

and reports, for information, the seconds per full-forward-equivalent of each search (one forward of the whole model
over the whole calibration set) and, on CUDA, the search's measured peak memory beyond the weights next to
`estimate_search_memory`'s figure.

The model is built from a config (Llama-3.2-1B's shape, untied head) with random weights whose blocks' output
projections are scaled per layer, so every unit matters by a clearly different amount. Calibration text is the local
Alpaca copy (`../shared/assets`), tokenized by a byte-level BPE trained on it here; without it, random token ids
(the script says so).

    python benchmarks/gpu_check.py                  # CUDA, ~1B model
    python benchmarks/gpu_check.py --tiny           # CPU smoke test: a tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import LOCAL_ALPACA  # noqa: E402

from optimum_multipruner import MultiPruner, MultiPrunerConfig  # noqa: E402
from optimum_multipruner.data import build_calibration_sets, load_text_rows  # noqa: E402
from optimum_multipruner.memory import GIB, estimate_search_memory  # noqa: E402
from optimum_multipruner.utils import atomic_write_text  # noqa: E402

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=256),
}
# Search settings per shape: every stage runs, a few dozen steps in all.
SEARCHES = {
    "1b": dict(target_ratio=0.06, pruning_distribution=(1, 1, 1), mlp_channel_group_size=1024,
               sequence_length=2048, num_calibration_samples_block=64, num_calibration_samples_width=32),
    "tiny": dict(target_ratio=0.18, pruning_distribution=(1, 1, 1), mlp_channel_group_size=64, width_alignment=32,
                 block_types=("attention",), sequence_length=64, num_calibration_samples_block=6,
                 num_calibration_samples_width=3),
}


def build_model(shape: str, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    """A random Llama whose attention and MLP output projections are scaled per layer (log-spaced 0.25x..4x, in a
    seeded random order), so removing different units changes the loss by clearly different amounts."""
    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    num_layers = config.num_hidden_layers
    scales = torch.logspace(math.log10(0.25), math.log10(4.0), 2 * num_layers).tolist()
    random.Random(0).shuffle(scales)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.mul_(scales[2 * i])
            layer.mlp.down_proj.weight.mul_(scales[2 * i + 1])
    return model


def calibration(vocab_size: int, folder: str) -> tuple[str, PreTrainedTokenizerFast, str]:
    """(calibration file, tokenizer, where the text came from): the local Alpaca rows with a byte-level BPE trained on
    them, else rows of random token ids (as numbers) with a tokenizer that maps each number to its id."""
    if os.path.isfile(LOCAL_ALPACA):
        rows = load_text_rows(LOCAL_ALPACA, "calibration", "text")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 32000), special_tokens=["<unk>", "<s>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(rows, trainer)
        return LOCAL_ALPACA, _wrap(tokenizer), f"Alpaca rows ({LOCAL_ALPACA}), byte-level BPE trained here"
    rng = random.Random(0)
    path = os.path.join(folder, "random_ids.txt")
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(5000):
            handle.write(" ".join(str(rng.randrange(3, vocab_size)) for _ in range(200)) + "\n")
    vocabulary = {"<unk>": 0, "<s>": 1, "</s>": 2, **{str(i): i for i in range(3, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return path, _wrap(tokenizer), f"RANDOM token ids: {LOCAL_ALPACA} is absent"


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def search(model, tokenizer, config: MultiPrunerConfig) -> tuple[MultiPruner, dict]:
    """Run `prune`; return the pruner and timing/memory figures (peak memory beyond the weights on CUDA)."""
    cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = {d: torch.cuda.memory_allocated(d) for d in range(torch.cuda.device_count())}
    pruner = MultiPruner(model, tokenizer)
    start = time.perf_counter()
    pruner.prune(config, progress=False)
    seconds = time.perf_counter() - start
    stats = pruner.record.search_stats.values()
    work = sum(s["full_forward_equivalents"] for s in stats)
    info = {"seconds": round(seconds, 2), "full_forward_equivalents": round(work, 2),
            "seconds_per_full_forward": round(sum(s["seconds"] for s in stats) / work, 4) if work else None}
    if cuda:
        torch.cuda.synchronize()
        info["peak_beyond_weights_gib"] = {
            f"cuda:{d}": round((torch.cuda.max_memory_allocated(d) - before[d]) / GIB, 3) for d in before
        }
    return pruner, info


def choices(record) -> list[tuple[str, int]]:
    return [(step.action, step.layer) for step in record.steps]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (smoke test)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    shape, device = ("tiny", "cpu") if args.tiny else ("1b", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; run with --tiny for the CPU smoke test")
    folder = tempfile.mkdtemp(prefix="gpu_check-")
    path, tokenizer, source = calibration(SHAPES[shape]["vocab_size"], folder)
    print(f"calibration: {source}")
    config = MultiPrunerConfig(calibration_dataset=path, batch_size=args.batch_size, **SEARCHES[shape])
    rows, results = [], {"shape": shape, "device": device, "calibration": source}

    def check(name: str, passed: bool, detail: str) -> None:
        rows.append((name, "ok" if passed else "MISMATCH", detail))

    model = build_model(shape, device, torch.bfloat16)
    dense = {k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters, bf16, {device}")

    plain, results["plain"] = search(model, tokenizer, MultiPrunerConfig(**{**config.to_dict(),
                                                                             "accelerated_search": False}))
    plain_record = plain.record
    del plain, model  # one model on the device at a time
    model = build_model(shape, device, torch.bfloat16)
    fast, results["accelerated"] = search(model, tokenizer, config)
    same = choices(fast.record) == choices(plain_record)
    worst = max((abs(a.perplexity / b.perplexity - 1) for a, b in zip(fast.record.steps, plain_record.steps)),
                default=0.0)
    check("plain vs accelerated: same choices", same,
          f"{len(fast.record.steps)} steps; perplexities differ by <= {worst:.2e} (relative)")
    if device == "cuda":
        sets = build_calibration_sets(config, tokenizer, model.config.vocab_size)
        estimate = estimate_search_memory(model.config, config, {name: len(s) for name, s in sets.items()},
                                          torch.bfloat16, ["cuda:0"] * model.config.num_hidden_layers)
        results["estimated_beyond_weights_gib"] = round(estimate.per_device["cuda:0"] / GIB, 3)

    if torch.cuda.device_count() >= 2 and device == "cuda":
        from accelerate import dispatch_model

        half = model.config.num_hidden_layers // 2
        device_map = {"model.embed_tokens": 0, "model.rotary_emb": 1, "model.norm": 1, "lm_head": 1}
        device_map.update({f"model.layers.{i}": 0 if i < half else 1 for i in range(2 * half)})
        spread = dispatch_model(build_model(shape, "cpu", torch.bfloat16), device_map)
        two, results["two_gpus"] = search(spread, tokenizer, config)
        check("two GPUs vs one: same record", choices(two.record) == choices(fast.record)
              and two.record.structure == fast.record.structure, f"{len(two.record.steps)} steps")
    else:
        rows.append(("two GPUs vs one", "skipped", f"{torch.cuda.device_count()} CUDA device(s)"))

    full = build_model(shape, device, torch.float32)
    full.load_state_dict({k: v.float() for k, v in dense.items()})
    try:
        MultiPruner(full).apply(fast.record)
        pruned = fast.model.state_dict()
        mismatched = [k for k, v in full.state_dict().items() if k not in pruned or v.shape != pruned[k].shape
                      or not torch.equal(v, pruned[k].float())]
        detail = f"{len(mismatched)} tensors differ" + (f" (first: {mismatched[0]})" if mismatched else "")
    except ValueError as error:  # `apply` refusing the record (e.g. another channel order) is a mismatch too
        mismatched, detail = ["apply refused"], str(error)[:120]
    check("bf16 record applied in fp32: same kept channels", not mismatched, detail)

    print(f"\n{'check':<52} {'result':<9} detail")
    for name, result, detail in rows:
        print(f"{name:<52} {result:<9} {detail}")
    for mode in ("plain", "accelerated", "two_gpus"):
        if mode in results:
            info = results[mode]
            print(f"{mode:<12} {info['seconds']:>8.1f} s  {info['full_forward_equivalents']:>8.1f} full-forward-eq  "
                  f"{info['seconds_per_full_forward']} s each" + (
                      f"  peak beyond weights {info['peak_beyond_weights_gib']} GiB" if "peak_beyond_weights_gib" in info
                      else ""))
    if "estimated_beyond_weights_gib" in results:
        print(f"estimate_search_memory (accelerated, cuda:0): {results['estimated_beyond_weights_gib']} GiB")
    results["checks"] = [dict(zip(("check", "result", "detail"), row)) for row in rows]
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    return 1 if any(result == "MISMATCH" for _, result, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
