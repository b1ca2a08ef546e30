"""Which pruning recovers best (issue 26 item 3): the results table's records, each recovered at one equal budget.

    python benchmarks/recovery_ranking.py --workdir recipes-work

Every committed SmolLM2-135M record (MultiPruner 44:52:4 and 20:80:0, BlockPruner, layer removal; 10% and 20%) is
applied to the dense model and recovered by `MultiPruner.recover` with one recipe of benchmarks/recovery_recipes.py
(`--arm`, default `base`: `RecoveryConfig`'s default) on the same C4 training file and budget. Measured before and
after recovery: the recipe study's selection text (held-out C4 and Alpaca) and WikiText-2 (first `--wikitext-windows`
test windows of 2048); after recovery also the 5-task zero-shot mean (first `--zero-shot-limit` items of each task),
with the dense model on the same items. The work folder may be the recipe study's (its C4 training file and held-out
split are shared); results go to `<workdir>/ranking.json`. Resumable like the study: a finished record is skipped, an
interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import torch
from recovery_recipes import (  # benchmarks/ is on sys.path: run as a script
    ARMS,
    HERE,
    Study,
    add_study_arguments,
    chosen,
    run_each,
)

from optimum_multipruner import MultiPruner
from optimum_multipruner.evaluation import evaluate_zero_shot
from optimum_multipruner.utils import read_json

from smollm2 import ASSETS, load_smollm2, pruned_smollm2  # noqa: E402 (recovery_recipes puts examples/ on sys.path)

RECORDS = ("multipruner_44_52_4_10", "blockpruner_10", "layers_bi_10",
           "multipruner_44_52_4_20", "multipruner_20_80_0_20", "blockpruner_20", "layers_bi_20")
METHODS = {"multipruner_44_52_4": "MultiPruner 44:52:4", "multipruner_20_80_0": "MultiPruner 20:80:0",
           "blockpruner": "BlockPruner", "layers_bi": "Layer removal (block influence)"}


class Ranking(Study):
    def __init__(self, workdir: str, max_tokens: int, selection_docs: int, wikitext_windows: int,
                 zero_shot_limit: int, arm: str) -> None:
        super().__init__(workdir, max_tokens, selection_docs, wikitext_windows)
        self.results_file = self.path("ranking.json")
        self.results = read_json(self.results_file) if os.path.isfile(self.results_file) else {"records": {}}
        settings = {"arm": arm, "recipe": ARMS[arm], "max_tokens": max_tokens, "wikitext_windows": wikitext_windows,
                    "zero_shot_limit": zero_shot_limit}
        if self.results.setdefault("settings", settings) != settings:
            raise ValueError(f"{self.results_file} holds a ranking with other settings ({self.results['settings']}); "
                             "use another --workdir or the same settings.")
        self.zero_shot_limit, self.arm = zero_shot_limit, arm

    def zero_shot(self, model: torch.nn.Module) -> dict[str, Any]:
        return evaluate_zero_shot(model, self.tokenizer, limit=self.zero_shot_limit, data_dir=ASSETS, batch_size=8)

    def student_of(self, record: str) -> MultiPruner:
        record_file = os.path.join(HERE, "results", "smollm2", record, "pruning_record.json")
        return MultiPruner.from_pretrained(pruned_smollm2(record_file, self.path("students", record)))

    def dense(self) -> None:
        if "dense" not in self.results:
            model = load_smollm2()[0]
            self.results["dense"] = {"selection": self.measure(model), "wikitext2": self.wikitext(model),
                                     "zero_shot": self.zero_shot(model)}
            self.save()

    def run_record(self, record: str) -> None:
        entry = self.results["records"].setdefault(record, {})
        if "zero_shot" in entry:
            return
        pruner = self.student_of(record)
        if "before" not in entry:
            model = pruner.model.eval()
            entry["before"] = {"selection": self.measure(model), "wikitext2": self.wikitext(model)}
            self.save()
        model = self.recover(pruner, ARMS[self.arm], self.path("ranking", record, "checkpoints"), entry)
        entry["wikitext2"] = self.wikitext(model)
        entry["zero_shot"] = self.zero_shot(model)
        self.save()

    def table(self) -> str:
        dense = self.results["dense"]

        def closed(before: float, after: float, reference: float) -> str:
            """Share of the gap closed, in perplexity (as the frontier's goals) and in log-perplexity."""
            log_share = (math.log(before) - math.log(after)) / (math.log(before) - math.log(reference))
            return f"{100 * (before - after) / (before - reference):.0f}% / {100 * log_share:.0f}%"

        lines = ["| method | ratio | selection C4 / Alpaca before → after | WikiText-2 before → after | WikiText-2 gap "
                 "closed (PPL / log) | zero-shot mean after (± se) |", "|---|---|---|---|---|---|",
                 f"| Dense | - | {dense['selection']['c4']:.2f} / {dense['selection']['alpaca']:.2f} | "
                 f"{dense['wikitext2']:.2f} | - | {100 * dense['zero_shot']['mean']:.1f} ± "
                 f"{100 * dense['zero_shot']['mean_stderr']:.1f} |"]
        for record, entry in self.results["records"].items():
            if "zero_shot" not in entry:
                continue
            method, ratio = record.rsplit("_", 1)
            before, final = entry["before"], entry["final"]
            lines.append(
                f"| {METHODS[method]} | {ratio}% | {before['selection']['c4']:.2f} / "
                f"{before['selection']['alpaca']:.2f} → {final['c4']:.2f} / {final['alpaca']:.2f} | "
                f"{before['wikitext2']:.2f} → {entry['wikitext2']:.2f} "
                f"| {closed(before['wikitext2'], entry['wikitext2'], dense['wikitext2'])} | "
                f"{100 * entry['zero_shot']['mean']:.1f} ± {100 * entry['zero_shot']['mean_stderr']:.1f} |")
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser, "record", wikitext_windows=8)
    parser.add_argument("--records", default=",".join(RECORDS), help=f"comma-separated subset of {','.join(RECORDS)}")
    parser.add_argument("--arm", default="base", choices=sorted(ARMS), help="the recovery recipe of every record")
    parser.add_argument("--zero-shot-limit", type=int, default=100, help="items of each zero-shot task")
    args = parser.parse_args()
    records = chosen(parser, args.records, RECORDS, "record")
    ranking = Ranking(args.workdir, args.max_tokens, args.selection_docs, args.wikitext_windows,
                      args.zero_shot_limit, args.arm)
    ranking.dense()
    run_each(records, ranking.run_record, ranking.table, "Record")


if __name__ == "__main__":
    main()
