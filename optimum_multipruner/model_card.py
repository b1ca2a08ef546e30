"""The model card (`README.md`) of a pruned checkpoint: what was removed, how it was searched, how to load it.

Written with `huggingface_hub.ModelCard` (YAML front matter the Hub reads, then a Markdown body) by
`MultiPruner.save_pretrained`, by the recovery step's save, and copied into exported IR folders and GGUF metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Optional, Union

from huggingface_hub import ModelCard, ModelCardData

from .architectures import get_adapter
from .utils import atomic_write_text, read_json

MODEL_CARD_NAME = "README.md"
TAGS = ["pruning", "multipruner"]
LIBRARY_NAME = "transformers"
PIPELINE_TAG = "text-generation"
STRUCTURE_HEADER = "| layer | attention heads | KV heads | MLP width | parameters |"


def write_model_card(
    directory: Union[str, os.PathLike],
    model_config,
    record=None,
    base_model: Optional[str] = None,
    evaluation_files: Optional[Iterable[Union[str, os.PathLike]]] = None,
) -> str:
    """Write `directory/README.md`, a Hub model card of a pruned (or recovered) checkpoint; returns its path.

    Args:
        directory: the checkpoint folder (it must exist); the card is written atomically.
        model_config: the saved model's config (pruned or dense).
        record: its `PruningRecord`, or `None`. A non-empty `record.recovery` dict (keys "config", "tokens_seen",
            "data_sha256", "loss_curve") adds a "Recovery" section.
        base_model: Hub id of the dense original; default `model_config.name_or_path` when it is a Hub id, else the
            `base_model` of the card in that local folder (a pruned checkpoint loaded to be recovered keeps it).
        evaluation_files: JSON files written by `optimum-cli multipruner evaluate --output`, shown as a table.

    Front matter: `base_model` when known, `library_name`, the tags `pruning` (for a pruned model) and `multipruner`,
    the pipeline tag, and the base model's license when its config or its card (local, or in the Hugging Face cache)
    states one. Local paths appear by their last component only.
    """
    from .modeling import layer_summary

    name_or_path = str(getattr(model_config, "name_or_path", "") or "")
    if base_model is None and name_or_path:
        base_model = _base_model_of(name_or_path)
    summary = layer_summary(model_config)
    pruned = summary["parameters"] < summary["dense_parameters"]
    data = ModelCardData(
        base_model=base_model,
        library_name=LIBRARY_NAME,
        tags=TAGS if pruned else [tag for tag in TAGS if tag != "pruning"],
        pipeline_tag=PIPELINE_TAG,
        license=_base_license(model_config, base_model or name_or_path),
    )
    sections = [
        _introduction(base_model or name_or_path, summary, record),
        _method(record),
        _structure(summary),
        _evaluation([read_json(path) for path in evaluation_files or ()]),
        _recovery(getattr(record, "recovery", None)),
        _loading(get_adapter(model_config).gguf_blocker(model_config) is None),
        _record(record),
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(part for part in sections if part) + "\n")
    path = os.path.join(directory, MODEL_CARD_NAME)
    atomic_write_text(path, str(card))
    return path


def _base_model_of(name_or_path: str) -> Optional[str]:
    """A Hub id as it is; for a local folder, the `base_model` its own card names (None without one)."""
    if not os.path.exists(name_or_path):
        return name_or_path if name_or_path.count("/") == 1 else None
    card_path = os.path.join(name_or_path, MODEL_CARD_NAME)
    if not os.path.isfile(card_path):
        return None
    return ModelCard.load(card_path).data.base_model


def display_path(value: str) -> str:
    """A local path by its last component (a card is published; the author's folders are not its business), a Hub
    id or name as it is."""
    if os.path.isabs(value) or os.path.exists(value):
        return os.path.basename(os.path.normpath(value))
    return value


def _without_local_paths(data: Any) -> Any:
    """`data` (JSON-like) with every string that is a local path shown by `display_path`."""
    if isinstance(data, dict):
        return {key: _without_local_paths(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_without_local_paths(value) for value in data]
    return display_path(data) if isinstance(data, str) else data


def _base_license(model_config, base: str) -> Optional[str]:
    """The license the config states, else the one of the base model's card: a local folder's, or the Hub's copy in
    the cache (nothing is downloaded)."""
    if getattr(model_config, "license", None):
        return model_config.license
    if not base:
        return None
    if os.path.isdir(base):
        card_path = os.path.join(base, MODEL_CARD_NAME)
    else:
        from huggingface_hub import try_to_load_from_cache

        card_path = try_to_load_from_cache(base, MODEL_CARD_NAME)
    if not isinstance(card_path, str) or not os.path.isfile(card_path):
        return None
    return ModelCard.load(card_path).data.license


def _introduction(base: str, summary: dict[str, Any], record) -> str:
    removed = 1 - summary["parameters"] / summary["dense_parameters"]
    origin = f"[{base}](https://huggingface.co/{base})" if base and not os.path.exists(base) else "its dense original"
    name = os.path.basename(base.rstrip("/")) or summary["model_type"]
    if removed <= 0:
        return f"# {name}\n\nThe dense model ({summary['parameters']:,} parameters), saved by optimum-multipruner."
    method = _method_name(record)
    recovery = getattr(record, "recovery", None)
    if recovery:
        tokens = recovery.get("tokens_seen")
        how = (f"structured pruning (optimum-multipruner, {method}), then recovered by distillation from the dense "
               f"model ({f'{tokens:,}' if isinstance(tokens, int) else 'unknown'} tokens)")
    else:
        how = f"training-free structured pruning (optimum-multipruner, {method})"
    lines = [
        f"# {name}, pruned with {method}" + (", then recovered" if recovery else ""),
        "",
        f"This model is {origin} with **{100 * removed:.2f}%** of its parameters removed by {how}: whole attention "
        "and MLP sub-blocks, MLP channels and attention heads, physically sliced out.",
        "",
        "| parameters | dense | pruned |",
        "|---|---|---|",
        f"| all (embeddings included) | {summary['dense_parameters']:,} | {summary['parameters']:,} |",
    ]
    return "\n".join(lines)


def _method_name(record) -> str:
    if record is None:
        return "optimum-multipruner"
    if record.source != "optimum-multipruner":
        return f"a record of {record.source}, applied by optimum-multipruner"
    return "BlockPruner" if record.config is not None and record.config.is_blockpruner else "MultiPruner"


def _method(record) -> str:
    if record is None:
        return ""
    config = record.config
    lines = ["## Method and settings", ""]
    if config is not None:
        settings = {
            "target ratio (share of all parameters)": config.target_ratio,
            "distribution blocks : MLP channels : heads": ":".join(f"{share:g}" for share in config.pruning_distribution),
            "objective": config.importance_metric,
            "search mode": config.search_mode,
            "MLP channels per step": config.mlp_channel_group_size,
            "weight-magnitude reordering": config.weight_reorder,
        }
        lines += [f"* {key}: `{value}`" for key, value in settings.items()]
    lines.append(f"* steps: {len(record.steps)}; target reached: {record.target_reached}")
    if config is not None:
        lines.append(
            f"* calibration data: `{display_path(config.calibration_dataset)}` "
            f"({config.num_calibration_samples_block} "
            f"block rows, {config.num_calibration_samples_width} width rows, sequences of "
            f"{config.sequence_length} tokens, seed {config.seed}), SHA-256 "
            f"`{_file_sha256(config.calibration_dataset) or 'unknown (a Hub data set or a file not here)'}`"
        )
    last = next((step for step in reversed(record.steps) if step.perplexity is not None), None)
    if last is not None:
        start = ", ".join(f"{name} {value:.3f}" for name, value in record.start_perplexity.items())
        when = " (before recovery)" if getattr(record, "recovery", None) else ""
        lines.append(f"* calibration perplexity{when}: {last.perplexity:.3f} after the last step (dense: {start})")
    return "\n".join(lines)


def _file_sha256(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _structure(summary: dict[str, Any]) -> str:
    """The per-layer table of `optimum-cli multipruner info` (0 = sub-block removed)."""
    dense = summary["dense"]
    lines = [
        "## Structure",
        "",
        f"Dense: {dense['attention_heads']} attention heads, {dense['kv_heads']} KV heads and MLP width "
        f"{dense['mlp_width']} in each of {len(summary['layers'])} layers; 0 = sub-block removed.",
        "",
        STRUCTURE_HEADER,
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['layer']} | {row['attention_heads']} | {row['kv_heads']} | {row['mlp_width']} | "
        f"{row['parameters']:,} |"
        for row in summary["layers"]
    ]
    return "\n".join(lines)


def _evaluation(results: list[dict[str, Any]]) -> str:
    if not results:
        return ""
    from .evaluation import format_results_table

    parts = ["## Evaluation", ""]
    for result in results:
        parts += [f"`{result.get('model')}` ({result.get('backend')}):", "", "```",
                  format_results_table(result.get("results", [])), "```", ""]
    return "\n".join(parts).rstrip()


def _recovery(recovery: Optional[dict[str, Any]]) -> str:
    if not recovery:
        return ""
    config = recovery.get("config") or {}
    losses = recovery.get("loss_curve") or []
    first, final = ([point.get("loss") if isinstance(point, dict) else point for point in (losses[0], losses[-1])]
                    if losses else (None, None))
    tokens = recovery.get("tokens_seen")
    lines = [
        "## Recovery",
        "",
        "After pruning, the model was trained to recover quality:",
        "",
        f"* method: {config.get('method', 'distillation')}",
        f"* tokens seen: {f'{tokens:,}' if isinstance(tokens, int) else tokens or 'unknown'}",
        f"* teacher: {display_path(recovery.get('teacher') or config.get('teacher') or 'the dense original')}",
    ]
    sources = recovery.get("data") or [{"source": source} for source in _as_list(config.get("dataset"))]
    if sources:
        lines.append("* training data: " + ", ".join(_source_line(source) for source in sources))
    if config.get("quantization"):
        lines.append(f"* weights: {config['quantization']}, learned with the teacher (quantization-aware, group size "
                     f"{config.get('quantization_group_size')})")
    if isinstance(first, (int, float)) and isinstance(final, (int, float)):
        lines.append(f"* distillation loss: {first:.4f} at the first logged step, {final:.4f} at the last")
    if recovery.get("data_sha256"):
        lines.append(f"* training data SHA-256: `{recovery['data_sha256']}`")
    return "\n".join(lines)


def _as_list(value: Any) -> list[Any]:
    return [] if not value else [value] if isinstance(value, str) else list(value)


def _source_line(usage: dict[str, Any]) -> str:
    """A training source by name, with its share of the tokens and its passes when the record has them."""
    line = f"`{display_path(usage['source'])}`"
    if "tokens" in usage:
        line += f" ({usage['tokens']:,} tokens, {usage['epochs']:g} passes)"
    return line


def _loading(gguf: bool) -> str:
    """How to load the checkpoint; the llama.cpp paragraph only for a family the GGUF export accepts."""
    return "\n".join([
        "## How to load it",
        "",
        "PyTorch (`pip install optimum-multipruner`; the import registers the pruned model types):",
        "",
        "```python",
        "import optimum_multipruner",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")',
        "```",
        "",
        "OpenVINO: `optimum-cli export openvino-pruned --model <this folder> --weight-format int8 model-ov` (after "
        "`pip install optimum-multipruner`); the IR folder then loads without this package, with "
        '`OVModelForCausalLM.from_pretrained("model-ov")` or openvino-genai. The stock `optimum-cli export openvino` '
        "takes this folder too (with `--task text-generation-with-past`), but its IR keeps the pruned model type and "
        "loads only after `import optimum_multipruner`.",
    ] + ([
        "",
        "llama.cpp: `optimum-cli multipruner export --format gguf -m <this folder> model.gguf`, then "
        "`llama-cli -m model.gguf`.",
    ] if gguf else []))


def _record(record) -> str:
    """The steps of the search as a table, and the whole record (less the weight order) in a folded block."""
    if record is None:
        return ""
    data = _without_local_paths(record.to_dict())
    data.pop("weight_order", None)  # long base64 per layer; in pruning_record.json
    lines = [
        "## Pruning record",
        "",
        "| step | stage | action | layer | kept after | calibration perplexity | ratio removed |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {step.step} | {step.stage} | {step.action} | {step.layer} | {step.kept} | "
        f"{'-' if step.perplexity is None else f'{step.perplexity:.3f}'} | "
        f"{'-' if step.ratio is None else f'{100 * step.ratio:.2f}%'} |"
        for step in record.steps
    ]
    lines += [
        "",
        "<details><summary>The record (`pruning_record.json` in this folder also holds the weight order that "
        "<code>MultiPruner(dense_model).apply(path)</code> rebuilds this model with)</summary>",
        "",
        "```json",
        json.dumps(data),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)
