"""The fast mode's frontier on whole searches: work against quality, one point per fast-mode setting, from the reports
of `fast_search_agreement.py` (each compares a whole fast search with the exact search of the same settings).

    python benchmarks/fast_search_frontier.py benchmarks/results/fast_search_agreement_4608_*.json \
        --output benchmarks/results/fast_search_frontier

Per search (ratio, stage distribution and calibration size), the exact search is the reference: its final
calibration and held-out perplexities and its path (the unit each step removed). Per fast search: work in
full-forward equivalents (FFE) and how many times fewer than the plain reference evaluation (one full forward per
candidate) and than the exact search; the exact path's steps it made the same choice on, in order; its calibration and
held-out perplexity excess over the exact search. The goals (`GOALS`): at least 90% of the exact choices, both
perplexities within 1% of the exact search's, at least 10x fewer FFE than the plain evaluation.

A report whose exact search lacks the path or the whole work (an exact search seeded with another search's first
steps, `--exact-from`, counts only its own steps) takes them from another report of the same search.
Writes `<output>.json`, `<output>.md` (the table) and `<output>.png` (perplexity excess against work).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

from optimum_multipruner.utils import atomic_write_text, read_json

GOALS = {"same_choice_share": 0.9, "perplexity_excess": 0.01, "fewer_than_plain": 10.0}
SEARCH_KEYS = ("ratio", "distribution", "rows", "sequence_length", "mlp_group_size")


def search_name(settings: dict[str, Any]) -> str:
    """E.g. `MultiPruner 44:52:4 20%, 40 rows x 512` or `BlockPruner 20%, ...`."""
    distribution = [float(x) for x in settings["distribution"]]
    method = ("BlockPruner" if distribution[1:] == [0.0, 0.0]
              else "MultiPruner " + ":".join(f"{x:g}" for x in distribution))
    return f"{method} {settings['ratio'] * 100:g}%, {settings['rows']} rows x {settings['sequence_length']}"


def setting_label(settings: dict[str, Any]) -> str:
    """The fast search's settings as a `FastSearchConfig(...)` argument list (defaults of their time written out)."""
    parts = [f"keep={settings['fast_keep']:g}"] if settings.get("fast_keep", 0.5) != 0.5 else []
    # `min_keep`: a floor on the halving, tried at e1f2689 and removed (it changed no whole search)
    parts += [f"min_keep={settings['fast_min_keep']}"] if settings.get("fast_min_keep", 1) != 1 else []
    screen = settings.get("fast_screen")
    parts.append(f"screen={screen:g}" if screen is not None else "screen=None")
    if screen is not None:
        parts.append(f"screen_radius={settings.get('fast_screen_radius', 1)}")
    tie_z = settings.get("fast_tie_z")
    parts.append(f"tie_z={tie_z:g}" if tie_z is not None else "tie_z=None")
    return ", ".join(parts)


def exact_reference(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The exact search of one group of reports: perplexities and path from any finished one, its whole work from
    one that was not seeded."""
    exact: dict[str, Any] = {}
    for report in reports:
        search = report["searches"].get("exact")
        if not search or not search["finished"]:
            continue
        if "path" in search and "path" not in exact:
            exact["path"] = search["path"]
        if "perplexity" not in exact:
            exact["perplexity"] = search["perplexity"]
        if not search.get("seeded_steps") and "ffe" not in exact:
            exact["ffe"] = search["ffe"]
    return exact


def same_choices(exact: dict[str, Any], report: dict[str, Any]) -> Optional[int]:
    """Steps on which the fast search removed what the exact one removed (in order): from the paths, else from the
    report's own comparison with a whole exact record."""
    fast = report["searches"]["fast"]
    if "path" in exact and "path" in fast:
        return sum(a == b for a, b in zip(exact["path"], fast["path"]))
    if "agreement" in report and not report["searches"]["exact"].get("seeded_steps"):
        return report["agreement"]["same_choice"]
    return None


def frontier_rows(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per search: the exact reference and one row per finished fast search."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        key = json.dumps([report["settings"][k] for k in SEARCH_KEYS])
        groups.setdefault(key, []).append(report)
    result = {}
    for group in groups.values():
        exact = exact_reference(group)
        if "perplexity" not in exact:
            continue
        rows = []
        for report in group:
            fast = report["searches"].get("fast")
            if not fast or not fast["finished"]:
                continue
            exact_steps = len(exact["path"]) if "path" in exact else report["agreement"]["steps_compared"]
            same = same_choices(exact, report)
            row = {
                "setting": setting_label(report["settings"]),
                "ffe": fast["ffe"],
                "fewer_than_plain": fast["plain_reference_ffe"] / fast["ffe"],
                "fewer_than_exact": exact["ffe"] / fast["ffe"] if "ffe" in exact else None,
                "same_choice": same,
                "exact_steps": exact_steps,
                "calibration_excess": fast["final_calibration_perplexity"] / exact["perplexity"]["first"] - 1,
                "held_out_excess": fast["perplexity"]["held_out"] / exact["perplexity"]["held_out"] - 1,
            }
            row["goals_met"] = {
                "same_choice": same is not None and same >= GOALS["same_choice_share"] * exact_steps,
                "perplexity": max(row["calibration_excess"], row["held_out_excess"]) <= GOALS["perplexity_excess"],
                "work": row["fewer_than_plain"] >= GOALS["fewer_than_plain"],
            }
            rows.append(row)
        rows.sort(key=lambda row: row["fewer_than_plain"])
        result[search_name(group[0]["settings"])] = {"exact": exact, "fast": rows}
    return result


def markdown(frontier: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, search in frontier.items():
        exact = search["exact"]
        lines += [f"**{name}**: exact search {exact.get('ffe', float('nan')):.1f} FFE, calibration perplexity "
                  f"{exact['perplexity']['first']:.3f}, held-out {exact['perplexity']['held_out']:.3f}", "",
                  "| Fast mode (`FastSearchConfig`) | FFE | Fewer than plain | Fewer than exact | Same choice as exact "
                  "| Calibration ppl vs exact | Held-out ppl vs exact | Goals met |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in search["fast"]:
            same = "-" if row["same_choice"] is None else f"{row['same_choice']} of {row['exact_steps']}"
            exact_ratio = "-" if row["fewer_than_exact"] is None else f"{row['fewer_than_exact']:.2f}x"
            met = [goal for goal, ok in row["goals_met"].items() if ok]
            lines.append(f"| {row['setting']} | {row['ffe']:.1f} | {row['fewer_than_plain']:.1f}x | {exact_ratio} | "
                         f"{same} | {100 * row['calibration_excess']:+.1f}% | {100 * row['held_out_excess']:+.1f}% | "
                         f"{', '.join(met) or 'none'} |")
        lines.append("")
    return "\n".join(lines)


def plot(frontier: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(frontier), figsize=(6 * len(frontier), 4.5), squeeze=False)
    for axis, (name, search) in zip(axes[0], frontier.items()):
        for row in search["fast"]:
            axis.scatter(row["fewer_than_plain"], 100 * row["held_out_excess"], color="tab:blue")
            axis.scatter(row["fewer_than_plain"], 100 * row["calibration_excess"], color="tab:orange", marker="x")
            axis.annotate(row["setting"].replace(", ", "\n"), (row["fewer_than_plain"], 100 * row["held_out_excess"]),
                          fontsize=6, xytext=(3, 3), textcoords="offset points")
        axis.axhline(100 * GOALS["perplexity_excess"], color="grey", linestyle=":")
        axis.axvline(GOALS["fewer_than_plain"], color="grey", linestyle=":")
        axis.set(title=name, xlabel="FFE, times fewer than the plain evaluation",
                 ylabel="final perplexity over the exact search's (%)")
        axis.legend(["held-out", "calibration"], fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="fast_search_agreement.py reports (JSON)")
    parser.add_argument("--output", help="write <output>.json, .md and .png")
    args = parser.parse_args(argv)
    frontier = frontier_rows([read_json(path) for path in args.reports])
    text = markdown(frontier)
    print(text)
    if args.output:
        atomic_write_text(args.output + ".json", json.dumps(frontier, indent=2) + "\n")
        atomic_write_text(args.output + ".md", text)
        plot(frontier, args.output + ".png")


if __name__ == "__main__":
    sys.exit(main())
