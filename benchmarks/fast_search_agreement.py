"""The fast search mode against the exact search on the real SmolLM2-135M: the same MultiPruner search (44:52:4, 20%,
MLP groups of 256 by default) on the same calibration text, once with `search_mode="exact"` (accelerated, per-sequence
early abandon: the plain reference search's choices) and once with `search_mode="fast"`.

Each search is resumable under `--work-dir/<mode>` (rerun the same command after an interruption; the exact one may
take more than one session on a 2-core CPU). `--max-steps` compares the first steps only (a larger one later extends
both searches); `--fast-keep`, `--fast-screen`, `--fast-screen-radius` and `--fast-tie-z` set the fast search's
`fast_search` fields of those names (it searches into `fast`, plus `_keep<k>` for another keep than 0.5, `_screen<m>`
unless the screen is off, `_radius<r>` for another radius than 1 and `_tie<z>` unless the tie rule is off: the folders
of several settings sit beside the same exact search). The report compares:

* work, in full-forward equivalents (FFE) per stage, from the records' `search_stats` (noise-free), and the plain
  reference evaluation's work: one full forward per candidate of every step (`candidates_started`, plus the fast
  mode's `candidates_screened`);
* the steps on which both searches removed the same unit (stage, action and layer), in order;
* the final calibration perplexity, and the perplexity on held-out Alpaca text of the same size (rows in neither
  calibration set; `smollm2.calibration_text`).

With `--modes fast` only, or while the exact search is unfinished, it reports what there is (the steps both made).

    python benchmarks/fast_search_agreement.py --work-dir /root/runs/agreement_1024 --rows 10 \
        --output benchmarks/results/fast_search_agreement_1024.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from calibration_overfit import calibration_perplexities  # noqa: E402
from smollm2 import calibration_options, calibration_text, load_smollm2  # noqa: E402

from optimum_multipruner import FastSearchConfig, MultiPruner, MultiPrunerConfig, PrunedStructure, PruningRecord  # noqa: E402
from optimum_multipruner import get_adapter  # noqa: E402
from optimum_multipruner.candidates import REMOVE_ATTENTION, SHRINK_ATTENTION  # noqa: E402
from optimum_multipruner.configuration import calibration_set  # noqa: E402
from optimum_multipruner.data import build_calibration_sets  # noqa: E402
from optimum_multipruner.resume_state import (  # noqa: E402
    FAST_MODE_PREFIX,
    PROGRESS_NAME,
    STOPPING_FIELDS,
    SearchProgress,
    comparable_fields,
    has_progress,
    state_dict_hash,
    tensors_hash,
)
from optimum_multipruner.record import RECORD_NAME  # noqa: E402
from optimum_multipruner.utils import atomic_write_text, read_json  # noqa: E402

MODES = ("exact", "fast")


def optional_float(text: str) -> Optional[float]:
    return None if text.lower() == "none" else float(text)


def search_config(args: argparse.Namespace, mode: str) -> MultiPrunerConfig:
    return MultiPrunerConfig(target_ratio=args.ratio, pruning_distribution=tuple(args.distribution),
                             mlp_channel_group_size=args.mlp_group_size, search_mode=mode, max_steps=args.max_steps,
                             **({"fast_search": FastSearchConfig(keep=args.fast_keep, screen=args.fast_screen,
                                                                 screen_radius=args.fast_screen_radius,
                                                                 tie_z=args.fast_tie_z)} if mode == "fast" else {}),
                             **calibration_options(args.rows, args.sequence_length))


def mode_folder(args: argparse.Namespace, mode: str) -> str:
    """`<work dir>/exact`, or `<work dir>/fast[_keep<k>][_screen<m>[_radius<r>]][_tie<z>]` (`_keep` for another
    `--fast-keep` than 0.5, `_screen` unless the screen is off, `_radius` for another `--fast-screen-radius` than 1,
    `_tie` unless the tie rule is off)."""
    suffix = ""
    if mode == "fast":
        suffix += f"_keep{args.fast_keep:g}" if args.fast_keep != 0.5 else ""
        if args.fast_screen is not None:
            suffix += f"_screen{args.fast_screen:g}"
            suffix += f"_radius{args.fast_screen_radius}" if args.fast_screen_radius != 1 else ""
        suffix += f"_tie{args.fast_tie_z:g}" if args.fast_tie_z is not None else ""
    return os.path.join(args.work_dir, mode + suffix)


def run_search(args: argparse.Namespace, mode: str, pruner_class: type[MultiPruner] = MultiPruner) -> PruningRecord:
    """The finished record of `mode`, searching (or resuming the search) first when there is none."""
    folder = mode_folder(args, mode)
    record_file = os.path.join(folder, RECORD_NAME)
    if os.path.isfile(record_file):
        record = PruningRecord.load(record_file)
        if record.config is not None and record.config.max_steps == args.max_steps:
            return record  # else a larger --max-steps extends the saved search
    model, tokenizer = load_smollm2()
    pruner = pruner_class(model, tokenizer)
    pruner.prune(search_config(args, mode), progress=args.progress, checkpoint_dir=folder,
                 resume_from=folder if has_progress(folder) else None)
    pruner.record.save(record_file)
    return pruner.record


def structure_after(steps: list, model_config, adapter) -> PrunedStructure:
    """What the dense model keeps after `steps` (each step's `kept`: KV heads, or MLP width; 0 removes)."""
    structure = PrunedStructure.dense(model_config, adapter)
    heads_per_group = adapter.attention_layout(model_config).heads_per_group
    for step in steps:
        if step.action in (REMOVE_ATTENTION, SHRINK_ATTENTION):
            structure.num_key_value_heads[step.layer] = step.kept
            structure.num_attention_heads[step.layer] = step.kept * heads_per_group
        else:
            structure.intermediate_size[step.layer] = step.kept
    return structure


def seed_exact_search(args: argparse.Namespace) -> None:
    """Write the exact search's progress file holding the first `--exact-from-steps` steps of `--exact-from`, so the
    exact search resumes from there (its work then counts only the steps after them: `shared_steps`).

    For an exact search whose work folder is gone: another search of the same settings that made the same first
    choices (an earlier report's `agreement`, or the exact search's own record) gives them back.
    """
    folder = mode_folder(args, "exact")
    if has_progress(folder) or os.path.isfile(os.path.join(folder, RECORD_NAME)):
        return  # seeded before, or searching: resume
    config = search_config(args, "exact")
    source = PruningRecord.load(args.exact_from)
    ignored = STOPPING_FIELDS | {"search_mode"}  # and the fast mode's fields
    mine, theirs = comparable_fields(config.to_dict()), comparable_fields(source.config or {})
    differing = sorted(k for k in set(mine) | set(theirs) if k not in ignored and not k.startswith(FAST_MODE_PREFIX)
                       and mine.get(k) != theirs.get(k))
    if differing:
        raise SystemExit(f"{args.exact_from} searched other settings than this exact search: {differing}")
    model, tokenizer = load_smollm2()
    calibration = build_calibration_sets(config, tokenizer, model.get_input_embeddings().num_embeddings)
    record = PruningRecord.from_dict(source.to_dict())
    record.steps = record.steps[: args.exact_from_steps]
    record.config, record.search_stats, record.target_reached = config, {}, False
    record.shared_steps = len(record.steps)
    record.structure = structure_after(record.steps, model.config, get_adapter(model))
    used_sets = {calibration_set(step.stage) for step in record.steps}
    record.start_perplexity = {k: v for k, v in record.start_perplexity.items() if k in used_sets}
    os.makedirs(folder, exist_ok=True)
    SearchProgress(config.to_dict(), state_dict_hash(model), tensors_hash(calibration), directory=folder).save(record)


def held_out_perplexity(args: argparse.Namespace, record: PruningRecord) -> dict[str, float]:
    """Perplexity of the model `record` rebuilds on its calibration sets and on held-out text of the same size."""
    model, tokenizer = load_smollm2()
    MultiPruner(model, tokenizer).apply(record)
    return calibration_perplexities(model, calibration_text(tokenizer, args.rows, args.sequence_length), tokenizer)


def work(record: PruningRecord) -> dict[str, Any]:
    """FFE per stage and in all, and the plain reference evaluation's (one full forward per candidate started)."""
    stats = record.search_stats
    return {
        "ffe_per_stage": {stage: value["full_forward_equivalents"] for stage, value in stats.items()},
        "ffe": sum(value["full_forward_equivalents"] for value in stats.values()),
        "plain_reference_ffe": sum(value["candidates_started"] + value.get("candidates_screened", 0)
                                   for value in stats.values()),
        "seconds": sum(value["seconds"] for value in stats.values()),
    }


def summary(args: argparse.Namespace, mode: str, record: PruningRecord, finished: bool) -> dict[str, Any]:
    result = {"finished": finished, "steps": len(record.steps),
              "final_calibration_perplexity": record.steps[-1].perplexity if record.steps else None,
              "seeded_steps": record.shared_steps,
              "path": [f"{step.action} {step.layer}" for step in record.steps]}
    if finished:
        result.update(work(record))
        result["perplexity"] = held_out_perplexity(args, record)
    return result


def agreement(exact: PruningRecord, fast: PruningRecord) -> dict[str, Any]:
    """Steps (in order) on which both removed the same unit, over the steps both made; and the first difference."""
    same, first_difference = 0, None
    for a, b in zip(exact.steps, fast.steps):
        if (a.stage, a.action, a.layer) == (b.stage, b.action, b.layer):
            same += 1
        elif first_difference is None:
            first_difference = {"step": a.step, "exact": (a.stage, a.action, a.layer), "fast": (b.stage, b.action, b.layer)}
    return {"steps_compared": min(len(exact.steps), len(fast.steps)), "same_choice": same,
            "first_difference": first_difference}


def saved_record(args: argparse.Namespace, mode: str) -> Optional[tuple[PruningRecord, bool]]:
    """The record of `mode` and whether its search finished: the final record, else the progress so far."""
    folder = mode_folder(args, mode)
    if os.path.isfile(os.path.join(folder, RECORD_NAME)):
        return PruningRecord.load(os.path.join(folder, RECORD_NAME)), True
    if has_progress(folder):
        return PruningRecord.from_dict(read_json(os.path.join(folder, PROGRESS_NAME))["record"]), False
    return None


def main(argv: Optional[list[str]] = None, pruner_class: type[MultiPruner] = MultiPruner) -> None:
    """`pruner_class`: what searches (`race_replay.py record` passes one whose evaluator logs its rounds)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="each mode's search progress and record (resumable)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, help="searches to run (default both)")
    parser.add_argument("--report-only", action="store_true", help="compare what the work folder holds; search nothing")
    parser.add_argument("--rows", type=int, default=10, help="Alpaca rows per calibration set (10: 2 x 512 tokens)")
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--distribution", type=float, nargs=3, default=(44, 52, 4))
    parser.add_argument("--mlp-group-size", type=int, default=256)
    parser.add_argument("--max-steps", type=int, help="compare the first steps only (both searches stop there)")
    defaults = FastSearchConfig()
    parser.add_argument("--fast-keep", type=float, default=defaults.keep, help="`fast_search.keep` of the fast search")
    parser.add_argument("--fast-screen", type=optional_float, default=defaults.screen,
                        help="`fast_search.screen` of the fast search, or 'none' (default: the config's)")
    parser.add_argument("--fast-screen-radius", type=int, default=defaults.screen_radius,
                        help="`fast_search.screen_radius` of the fast search (default: the config's)")
    parser.add_argument("--fast-tie-z", type=optional_float, default=defaults.tie_z,
                        help="`fast_search.tie_z` of the fast search, or 'none' (default: the config's)")
    parser.add_argument("--exact-from", help="a record whose first steps the exact search made too (its work folder "
                        "gone): the exact search starts after them")
    parser.add_argument("--exact-from-steps", type=int, help="how many steps of --exact-from to start from")
    parser.add_argument("--threads", type=int, help="torch threads (records are identical only at equal counts)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--output", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.exact_from and not args.report_only and "exact" in args.modes:
        seed_exact_search(args)
    if not args.report_only:
        for mode in args.modes:
            run_search(args, mode, pruner_class)
    records = {mode: saved for mode in MODES if (saved := saved_record(args, mode)) is not None}
    report: dict[str, Any] = {
        "settings": {key: value for key, value in vars(args).items() if key not in ("progress", "output", "report_only")},
        "calibration_tokens_per_set": None,
        "searches": {mode: summary(args, mode, record, finished) for mode, (record, finished) in records.items()},
    }
    if records:
        config = next(iter(records.values()))[0].config or {}
        report["calibration_tokens_per_set"] = {"rows": config.get("num_calibration_samples_width"),
                                                "sequence_length": config.get("sequence_length")}
    if set(MODES) <= set(records):
        report["agreement"] = agreement(records["exact"][0], records["fast"][0])
        exact, fast = report["searches"]["exact"], report["searches"]["fast"]
        if exact["finished"] and fast["finished"]:
            report["fast_vs_exact_work"] = exact["ffe"] / fast["ffe"]
            report["fast_vs_plain_work"] = fast["plain_reference_ffe"] / fast["ffe"]
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
