"""llama.cpp quality and decode speed of the results table's SmolLM2-135M MultiPruner 10% model, exported to GGUF.

The record `benchmarks/results/smollm2/multipruner_44_52_4_10/pruning_record.json` is applied to the dense SmolLM2
(`examples/smollm2.py`); both models are exported with `export_gguf` in f16 and q8_0 and run through
llama-cpp-python (one thread: the machine's CPU is shared). Measured, pruned model first (`--dense-perplexity` adds
the dense model's perplexities):

* WikiText-2 perplexity on the first test windows of 2048 tokens, by `evaluate_perplexity`'s own protocol and code:
  the GGUF models are called through llama.cpp's logits of every position (`LlamaCppLogits`), next to PyTorch
  (float32) and OpenVINO int8 (`export_openvino`, weight format int8);
* decode tokens/s of the pruned and the dense q8_0 file: runs interleaved (dense, pruned, dense, ...), each decoding
  `--new-tokens` tokens one at a time after a `--prompt-length` prompt; every run and the medians are kept.

    python benchmarks/llamacpp_speed.py --dense-perplexity   # -> benchmarks/results/smollm2/llamacpp.json

The results JSON is written after every measurement, and a rerun skips what it already holds.

llama.cpp's CPU backend is loaded without its extra weight buffers (AMX / repacked q8_0): on this machine they stop
the process with an illegal instruction. They change the weights' layout in memory, not the results; decode with them
may be faster where they run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import DEFAULT_WIKITEXT, load_smollm2  # noqa: E402

from optimum_multipruner import MultiPruner, count_parameters, export_gguf, export_openvino  # noqa: E402
from optimum_multipruner.data import build_sequences, load_text_rows  # noqa: E402
from optimum_multipruner.evaluation import evaluate_perplexity, write_results_json  # noqa: E402
from optimum_multipruner.utils import read_json  # noqa: E402

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "smollm2", "multipruner_44_52_4_10",
                      "pruning_record.json")
OUTTYPES = ("f16", "q8_0")
SEQUENCE_LENGTH = 2048


def load_gguf(path: str, n_ctx: int, logits_all: bool):
    """llama-cpp-python's model of a GGUF file: one thread, without the CPU backend's extra weight buffers."""
    import llama_cpp

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=512, n_threads=1, n_threads_batch=1,
                               logits_all=logits_all, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults


class LlamaCppLogits:
    """A llama.cpp model called as `model(input_ids=...)` -> `.logits` (what `evaluate_perplexity` calls)."""

    def __init__(self, llm) -> None:
        self.llm = llm

    def __call__(self, input_ids: torch.Tensor, attention_mask=None) -> SimpleNamespace:
        logits = []
        for ids in input_ids.tolist():
            self.llm.reset()
            self.llm.eval(ids)
            logits.append(torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32)))
        return SimpleNamespace(logits=torch.stack(logits))


def decode_tokens_per_second(llm, prompt: list[int], tokens: list[int]) -> float:
    """Tokens/s of decoding `tokens` one at a time after `prompt` (prefill not timed)."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for token in tokens:
        llm.eval([token])
    return len(tokens) / (time.perf_counter() - start)


class Measurements:
    """Results kept in the `--output` JSON, written after every measurement: a rerun skips what is there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data = read_json(path) if os.path.isfile(path) else {"results": {}}

    def get(self, model: str, key: str, measure):
        row = self.data["results"].setdefault(model, {})
        if key not in row:
            row[key] = measure()
            write_results_json(self.data, self.path)
            print(model, key, row[key], flush=True)
        return row[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/llamacpp_speed", help="GGUF files and IRs (rewritten)")
    parser.add_argument("--windows", type=int, default=6, help="WikiText-2 test windows of 2048 tokens")
    parser.add_argument("--repetitions", type=int, default=5, help="decode runs per model (interleaved)")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(RECORD), "..", "llamacpp.json"),
                        help="results JSON, written after every measurement (a rerun skips what it holds)")
    parser.add_argument("--dense-perplexity", action="store_true", help="also measure the dense model's perplexities")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    began = time.perf_counter()
    results = Measurements(args.output)

    models = {"dense": load_smollm2(), "pruned": load_smollm2()}
    tokenizer = models["dense"][1]
    MultiPruner(models["pruned"][0]).apply(RECORD)
    files = {}
    for name, (model, _) in models.items():
        results.get(name, "parameters", lambda: count_parameters(model))
        for outtype in OUTTYPES:
            files[name, outtype] = os.path.join(args.work_dir, f"{name}-{outtype}.gguf")
            export_gguf(model, files[name, outtype], outtype, overwrite=True, tokenizer=tokenizer)
            results.get(name, f"gguf_{outtype}_bytes", lambda: os.path.getsize(files[name, outtype]))

    def perplexity(model) -> float:
        return evaluate_perplexity(model, tokenizer, DEFAULT_WIKITEXT, SEQUENCE_LENGTH, args.windows,
                                   progress=False)["perplexity"]

    def llama_cpp_perplexity(path: str) -> float:
        llm = load_gguf(path, SEQUENCE_LENGTH, logits_all=True)
        try:
            return perplexity(LlamaCppLogits(llm))
        finally:
            llm.close()

    def openvino_perplexity(model, name: str) -> float:
        from optimum.intel import OVModelForCausalLM

        ir = os.path.join(args.work_dir, f"{name}-ov-int8")
        export_openvino(model, ir, weight_format="int8", overwrite=True, tokenizer=tokenizer, convert_tokenizer=False)
        return perplexity(OVModelForCausalLM.from_pretrained(ir))

    measured = ["pruned", "dense"] if args.dense_perplexity else ["pruned"]
    for name in measured:
        model = models[name][0]
        for outtype in OUTTYPES:
            results.get(name, f"llamacpp_{outtype}", lambda: llama_cpp_perplexity(files[name, outtype]))
        if name == "pruned":
            results.get("decode", "q8_0_tokens_per_s", lambda: decode_runs(files, tokenizer, args))
        results.get(name, "pytorch_fp32", lambda: perplexity(model))
        results.get(name, "openvino_int8", lambda: openvino_perplexity(model, name))

    results.data["settings"] = {
        "record": os.path.relpath(RECORD), "windows": args.windows, "sequence_length": SEQUENCE_LENGTH,
        "prompt_length": args.prompt_length, "new_tokens": args.new_tokens, "repetitions": args.repetitions,
        "llama_cpp_threads": 1, "seconds_this_run": time.perf_counter() - began,
    }
    write_results_json(results.data, args.output)
    print(json.dumps(results.data, indent=2))


def decode_runs(files: dict, tokenizer, args) -> dict[str, dict]:
    """Decode tokens/s of the dense and the pruned q8_0 file: `--new-tokens` WikiText-2 tokens fed one at a time after
    a `--prompt-length` prompt (prefill not timed), runs interleaved (dense, pruned, dense, ...)."""
    length = args.prompt_length + args.new_tokens
    rows = load_text_rows(DEFAULT_WIKITEXT, "evaluation")
    text = build_sequences(tokenizer, ["\n\n".join(rows[:400])], length, DEFAULT_WIKITEXT)[0].tolist()
    prompt, tokens = text[: args.prompt_length], text[args.prompt_length:]
    decoders = {name: load_gguf(files[name, "q8_0"], length, logits_all=False) for name in ("dense", "pruned")}
    runs = {name: [] for name in decoders}
    for _ in range(args.repetitions):
        for name, llm in decoders.items():
            runs[name].append(decode_tokens_per_second(llm, prompt, tokens))
    for llm in decoders.values():
        llm.close()
    return {"runs": runs, "median": {name: statistics.median(values) for name, values in runs.items()}}

if __name__ == "__main__":
    main()
