"""Recovery recipe study (issue 26): which recovery setting closes most of the pruned model's gap to dense.

    python benchmarks/recovery_recipes.py --workdir recipes-work --arms base,lr2e-4,lr2e-4-cosine

The student is the results table's MultiPruner 44:52:4 10% model of SmolLM2-135M, the teacher the dense model. Every
arm is one `MultiPruner.recover` run at the same token budget; arms are chosen on **selection text** only:

* held-out C4: `--selection-docs` documents of the local C4 sample, drawn with a fixed seed and removed from the
  training file (`c4_train.jsonl` in the work folder holds every other document of both sample files);
* held-out Alpaca: the results table's held-out Alpaca sequences (rows in neither calibration set of the search).

The `int4-*` arms are quantization-aware distillation (int4 weights, NNCF FQ_LORA), measured fake-quantized in
PyTorch, also before their first step (the int4 start: AWQ + scale estimation or round-to-nearest); `*-after` arms start
from the `base` arm's recovered model, `int4-awq-joint` from the pruned model with the budget of both runs.
WikiText-2 (first `--wikitext-windows` test windows of 2048) is measured at the end of each arm for the report only.
Selection perplexity is measured before training (once, shared), halfway and at the end (a `TrainerCallback`), so
every arm has a short curve. One command, resumable: a finished arm is skipped, an interrupted one continues from its
last checkpoint, and measurements already made are kept. Results: `<workdir>/results.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any, Optional

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from optimum_multipruner import MultiPruner
from optimum_multipruner.evaluation import evaluate_perplexity
from optimum_multipruner.nll import perplexity, reference_ignore_index
from optimum_multipruner.record import PruningRecord
from optimum_multipruner.recovery import RecoveryConfig
from optimum_multipruner.utils import atomic_write_text, get_logger, read_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from smollm2 import (  # noqa: E402
    ASSETS,
    DEFAULT_WIKITEXT,
    calibration_text,
    load_smollm2,
    prepare_smollm2,
    pruned_smollm2,
)

logger = get_logger("recovery_recipes")

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "results", "smollm2", "multipruner_44_52_4_10", "pruning_record.json")
C4_FILES = [os.path.join(ASSETS, "c4-redpajama-sample", f"sample_c4-rp{i}.jsonl") for i in (1, 2)]
ALPACA_TRAIN = os.path.join(ASSETS, "alpaca", "alpaca_5000_text.jsonl")
SEQUENCE_LENGTH = 512
SELECTION_SEED = 1234
SELECTION_SEQUENCES = 12  # of the held-out C4 documents

# Every arm: RecoveryConfig fields over the common ones (full fine-tuning, KL at T=1, 1 x 512 tokens per step).
COMMON = dict(sequence_length=SEQUENCE_LENGTH, save_steps=10, logging_steps=5, warmup_steps=6)
QUANTIZATION_AWARE = dict(quantization="int4", learning_rate=1e-4, lr_scheduler_type="cosine")
ARMS: dict[str, dict[str, Any]] = {
    "base": dict(learning_rate=5e-5, lr_scheduler_type="constant_with_warmup"),  # RecoveryConfig's default
    "lr2e-4": dict(learning_rate=2e-4, lr_scheduler_type="constant_with_warmup"),
    "lr2e-4-cosine": dict(learning_rate=2e-4, lr_scheduler_type="cosine"),
    "lr5e-4-cosine": dict(learning_rate=5e-4, lr_scheduler_type="cosine"),
    "T2": dict(learning_rate=2e-4, lr_scheduler_type="cosine", temperature=2.0),
    "batch8k": dict(learning_rate=5e-4, lr_scheduler_type="cosine", gradient_accumulation_steps=16, warmup_steps=0),
    "lora": dict(method="lora", lora_rank=64, lora_alpha=128, learning_rate=5e-4, lr_scheduler_type="cosine"),
    "hidden": dict(learning_rate=5e-5, lr_scheduler_type="constant_with_warmup", hidden_state_weight=1.0),
    # the base recipe in bf16 mixed precision (CPU autocast here): the same quality for less time?
    "bf16": dict(learning_rate=5e-5, lr_scheduler_type="constant_with_warmup", bf16=True),
    # half the sequences from C4 prefixes continued by the teacher (`teacher_text`), half real C4
    "teacher-mix": dict(learning_rate=5e-5, lr_scheduler_type="constant_with_warmup", teacher_text="mix"),
    # only the teacher-continued text (a second pass where generation stopped early at EOS)
    "teacher-only": dict(learning_rate=5e-5, lr_scheduler_type="constant_with_warmup", teacher_text="only",
                         max_epochs=2),
    # int4 quantization-aware distillation (NNCF FQ_LORA; adapters at 1e-4, scales at 1e-5 as NNCF's example), measured
    # fake-quantized: after the `base` arm's float recovery (AWQ + scale estimation or round-to-nearest start), or
    # jointly from the pruned model at the same total budget (twice the arm budget: float + int4 of the others)
    "int4-awq-after": dict(QUANTIZATION_AWARE, start_from="base"),
    "int4-rtn-after": dict(QUANTIZATION_AWARE, quantization_init="rtn", start_from="base"),
    "int4-awq-joint": dict(QUANTIZATION_AWARE, budget_factor=2),
}
TEACHER_TEXT = dict(num_sequences=64, new_tokens=480, prefix_tokens=32, temperature=0.7, top_p=0.95, seed=0,
                    batch_size=32)


def tokens_per_step(config: RecoveryConfig) -> int:
    """Training tokens per optimizer step of a one-process run of `config`."""
    return config.sequence_length * config.per_device_train_batch_size * config.gradient_accumulation_steps


class MeasuredCurve(TrainerCallback):
    """`measure(model)` at the given optimizer steps, kept in `results["curve"]` by step and saved after each (a step
    measured before an interruption is not measured again)."""

    def __init__(self, steps: list[int], measure, results: dict[str, Any], save) -> None:
        self.steps, self.measure, self.results, self.save = steps, measure, results, save

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.on_step_end(args, state, control, model=model)  # step 0 when asked: e.g. int4 before its training

    def on_step_end(self, args, state, control, model=None, **kwargs):
        key = str(state.global_step)
        if state.global_step in self.steps and key not in self.results["curve"]:
            model.eval()
            self.results["curve"][key] = self.measure(model)
            model.train()
            self.save()


class Study:
    def __init__(self, workdir: str, max_tokens: int, selection_docs: int, wikitext_windows: int) -> None:
        self.workdir = os.path.abspath(workdir)
        self.max_tokens = max_tokens
        self.selection_docs = selection_docs
        self.wikitext_windows = wikitext_windows
        os.makedirs(self.workdir, exist_ok=True)
        self.results_file = os.path.join(self.workdir, "results.json")
        self.results = read_json(self.results_file) if os.path.isfile(self.results_file) else {"arms": {}}
        self.dense_dir = str(prepare_smollm2())
        self.tokenizer = load_smollm2()[1]
        self.selection = self._selection_text()
        self.ignore_index = reference_ignore_index(self.tokenizer)

    def save(self) -> None:
        atomic_write_text(self.results_file, json.dumps(self.results, indent=2) + "\n")

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def _selection_text(self) -> dict[str, torch.Tensor]:
        """Held-out C4 (documents removed from the training file) and held-out Alpaca, `[n, 512]` each."""
        from optimum_multipruner.data import build_sequences

        documents = [line for name in C4_FILES for line in open(name, encoding="utf-8") if line.strip()]
        held_out = set(random.Random(SELECTION_SEED).sample(range(len(documents)), self.selection_docs))
        train_file = self.path("c4_train.jsonl")
        if not os.path.isfile(train_file):
            atomic_write_text(train_file, "".join(doc for i, doc in enumerate(documents) if i not in held_out))
        c4_rows = [json.loads(documents[i])["text"] for i in sorted(held_out)]
        return {"c4": build_sequences(self.tokenizer, c4_rows, SEQUENCE_LENGTH, "held-out C4")[:SELECTION_SEQUENCES],
                "alpaca": calibration_text(self.tokenizer, 40, SEQUENCE_LENGTH)["held_out"]}

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {name: perplexity(model, sequences, batch_size=1, ignore_index=self.ignore_index, progress=False)
                    for name, sequences in self.selection.items()}

    def wikitext(self, model: torch.nn.Module) -> float:
        return evaluate_perplexity(model, self.tokenizer, DEFAULT_WIKITEXT, 2048, self.wikitext_windows,
                                   progress=False)["perplexity"]

    def student(self, start_from: Optional[str] = None) -> MultiPruner:
        """The pruned 10% model, or the model arm `start_from` recovered (its last checkpoint)."""
        if start_from is None:
            return MultiPruner.from_pretrained(pruned_smollm2(RECORD, self.path("pruned10")))
        checkpoints = self.path("arms", start_from, "checkpoints")
        last = max((name for name in os.listdir(checkpoints) if name.startswith("checkpoint-")),
                   key=lambda name: int(name.split("-")[1]))
        if "wikitext2" not in self.results["arms"].get(start_from, {}):
            raise ValueError(f"arm {start_from} is not finished; run it first.")
        pruner = MultiPruner(AutoModelForCausalLM.from_pretrained(os.path.join(checkpoints, last)), self.tokenizer)
        # the same pruning: its recovery section becomes this arm's run
        pruner.record = PruningRecord.load(pruned_smollm2(RECORD, self.path("pruned10")))
        return pruner

    def teacher_text(self) -> str:
        """C4 training prefixes continued by the dense model's fp32 IR through openvino-genai (the IR exported once;
        the text generated once, resumable)."""
        from optimum_multipruner import export_openvino
        from optimum_multipruner.recovery.generation import generate_teacher_text

        teacher_ir = self.path("dense_fp32_ir")
        if not os.path.isdir(teacher_ir):
            export_openvino(self.dense_dir, teacher_ir, weight_format="fp32")
        return generate_teacher_text(teacher_ir, self.tokenizer, self.path("teacher_c4.jsonl"),
                                     prompts=self.path("c4_train.jsonl"), **TEACHER_TEXT)

    def references(self) -> None:
        """Selection and WikiText-2 perplexity of the dense model and of the pruned model before recovery."""
        for name in ("dense", "pruned10"):
            if name in self.results:
                continue
            if name == "dense":
                model = load_smollm2()[0]
            else:
                model = self.student().model.eval()
            self.results[name] = {"selection": self.measure(model), "wikitext2": self.wikitext(model)}
            self.save()

    def recover(self, pruner: MultiPruner, settings: dict[str, Any], checkpoints: str,
                results: dict[str, Any]) -> torch.nn.Module:
        """`pruner.recover` with `settings` over COMMON on the C4 training file (plus teacher text if asked), the
        selection curve halfway and at the end kept in `results["curve"]`; returns the recovered model in eval mode."""
        settings = {**COMMON, **settings}
        settings.pop("start_from", None)
        dataset = self.path("c4_train.jsonl")
        teacher_text = settings.pop("teacher_text", None)
        if teacher_text is not None:
            dataset = self.teacher_text() if teacher_text == "only" else [dataset, self.teacher_text()]
        max_tokens = self.max_tokens * settings.pop("budget_factor", 1)
        config = RecoveryConfig(teacher=self.dense_dir, dataset=dataset, max_tokens=max_tokens, **settings)
        steps = math.ceil(config.max_tokens / tokens_per_step(config))
        results.setdefault("curve", {})
        start = time.perf_counter()
        measured = {max(1, steps // 2), steps} | ({0} if config.quantization else set())
        curve = MeasuredCurve(sorted(measured), self.measure, results, self.save)
        pruner.recover(config, checkpoint_dir=checkpoints, resume=os.path.isdir(checkpoints), callbacks=[curve])
        model = pruner.model.eval()
        results["seconds_last_run"] = time.perf_counter() - start
        results["tokens_seen"] = pruner.record.recovery["tokens_seen"]
        results["loss_curve"] = pruner.record.recovery["loss_curve"]
        results["final"] = self.measure(model) if str(steps) not in results["curve"] else results["curve"][str(steps)]
        return model

    def run_arm(self, name: str) -> None:
        arm = self.results["arms"].setdefault(name, {"settings": ARMS[name], "curve": {}})
        if "wikitext2" in arm:
            return
        model = self.recover(self.student(ARMS[name].get("start_from")), ARMS[name],
                             self.path("arms", name, "checkpoints"), arm)
        arm["wikitext2"] = self.wikitext(model)
        self.save()

    def table(self) -> str:
        dense, pruned = self.results["dense"], self.results["pruned10"]

        def closed(value: float, key: str, reference: str = "selection") -> float:
            d = dense[reference][key] if reference == "selection" else dense[reference]
            p = pruned[reference][key] if reference == "selection" else pruned[reference]
            return (math.log(p) - math.log(value)) / (math.log(p) - math.log(d))

        lines = ["| arm | C4 sel. | Alpaca sel. | selection gap closed (log-PPL, mean) | WikiText-2 | WikiText-2 gap "
                 "closed |", "|---|---|---|---|---|---|",
                 f"| dense | {dense['selection']['c4']:.2f} | {dense['selection']['alpaca']:.2f} | - | "
                 f"{dense['wikitext2']:.2f} | - |",
                 f"| pruned 10% | {pruned['selection']['c4']:.2f} | {pruned['selection']['alpaca']:.2f} | 0% | "
                 f"{pruned['wikitext2']:.2f} | 0% |"]
        for name, arm in self.results["arms"].items():
            if "wikitext2" not in arm:
                continue
            if "0" in arm["curve"]:  # int4 before its training
                start = arm["curve"]["0"]
                selection = (closed(start["c4"], "c4") + closed(start["alpaca"], "alpaca")) / 2
                lines.append(f"| {name}, 0 tokens | {start['c4']:.2f} | {start['alpaca']:.2f} | "
                             f"{100 * selection:.1f}% | - | - |")
            final = arm["final"]
            selection = (closed(final["c4"], "c4") + closed(final["alpaca"], "alpaca")) / 2
            wiki = (pruned["wikitext2"] - arm["wikitext2"]) / (pruned["wikitext2"] - dense["wikitext2"])
            lines.append(f"| {name} | {final['c4']:.2f} | {final['alpaca']:.2f} | {100 * selection:.1f}% | "
                         f"{arm['wikitext2']:.2f} | {100 * wiki:.1f}% |")
        return "\n".join(lines)


def add_study_arguments(parser: argparse.ArgumentParser, unit: str, wikitext_windows: int) -> None:
    """The options every study over this work folder shares (`unit`: what one run is, e.g. "arm")."""
    parser.add_argument("--workdir", default="recipes-work")
    parser.add_argument("--max-tokens", type=int, default=30_720, help=f"recovery budget of every {unit} (tokens)")
    parser.add_argument("--selection-docs", type=int, default=24, help="C4 documents held out as selection text")
    parser.add_argument("--wikitext-windows", type=int, default=wikitext_windows, help="WikiText-2 windows of 2048")


def chosen(parser: argparse.ArgumentParser, value: str, names, unit: str) -> list[str]:
    """The comma-separated `value`, each one of `names` (a parser error names the others)."""
    picked = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(picked) - set(names))
    if unknown:
        parser.error(f"unknown {unit}s {unknown}; choose from {', '.join(names)}")
    return picked


def run_each(names: list[str], run, table, unit: str) -> None:
    """`run(name)` for each name in turn, printing `table()` after each."""
    for name in names:
        logger.warning("%s %s", unit, name)
        run(name)
        print(table(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser, "arm", wikitext_windows=4)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    args = parser.parse_args()
    arms = chosen(parser, args.arms, ARMS, "arm")
    study = Study(args.workdir, args.max_tokens, args.selection_docs, args.wikitext_windows)
    study.references()
    run_each(arms, study.run_arm, study.table, "Arm")


if __name__ == "__main__":
    main()
