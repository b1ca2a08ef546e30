"""Which engine generates teacher text faster (issue 26 item 2): PyTorch `generate` against openvino-genai.

    python benchmarks/teacher_text_speed.py --workdir teacher-speed

`generate_teacher_text` continues C4 prefixes with the dense SmolLM2-135M, once with the PyTorch model and once with
its fp32 OpenVINO IR (exported once into the work folder), `--rounds` times each, interleaved (the engine order
reversed every round) so that both see the same machine load; every call writes a fresh file (round r: seed r).
Prints generated tokens per second of each engine and their ratio (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from optimum_multipruner import export_openvino
from optimum_multipruner.recovery.generation import generate_teacher_text

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import ASSETS, load_smollm2, prepare_smollm2  # noqa: E402

PROMPTS = os.path.join(ASSETS, "c4-redpajama-sample", "sample_c4-rp1.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="teacher-speed")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    ir = os.path.join(args.workdir, "smollm2_fp32")
    if not os.path.isdir(ir):
        export_openvino(str(prepare_smollm2()), ir, weight_format="fp32")
    model, tokenizer = load_smollm2()
    teachers = {"pytorch": model, "openvino-genai": ir}
    seconds: dict[str, list[float]] = {name: [] for name in teachers}
    tokens: dict[str, int] = {}
    for round_index in range(args.rounds):
        for name in list(teachers)[:: 1 if round_index % 2 == 0 else -1]:
            output = os.path.join(args.workdir, f"{name}_{round_index}.jsonl")
            for leftover in (output, output + ".manifest.json", output + ".partial"):  # of an interrupted run
                if os.path.exists(leftover):
                    os.remove(leftover)
            start = time.perf_counter()
            generate_teacher_text(teachers[name], tokenizer, output, num_sequences=args.sequences,
                                  new_tokens=args.new_tokens, prompts=PROMPTS, batch_size=args.batch_size,
                                  seed=round_index, progress=False)
            seconds[name].append(time.perf_counter() - start)
            rows = [json.loads(line)["text"] for line in open(output, encoding="utf-8")]
            tokens[name] = sum(len(tokenizer(row, add_special_tokens=False).input_ids) for row in rows)
    rates = {name: tokens[name] / statistics.median(seconds[name]) for name in teachers}
    for name, rate in rates.items():
        print(f"{name}: {rate:.0f} tokens/s of text (median of {args.rounds}; {tokens[name]} tokens a round)")
    print(f"openvino-genai / pytorch: {rates['openvino-genai'] / rates['pytorch']:.2f}x")


if __name__ == "__main__":
    main()
