"""`MultiPrunerConfig`: every setting of a MultiPruner (or BlockPruner) search, validated on construction; the fast
search mode's settings nested in it as a `FastSearchConfig`; `CompensationConfig`, the refit after pruning.

This module imports only the standard library at module level: `optimum-cli multipruner prune` builds its options
from these dataclasses' fields (type, `help`, `choices`, `advanced` in each field's metadata) at every start-up, when
torch must not be imported.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from optimum_multipruner_constants import DEVICE_NAME_PATTERN

from .config_base import ConfigMixin, check_positive_int, is_number, option
from .utils import user_stacklevel

CONFIG_NAME = "multipruner_config.json"

BLOCK_STAGE, MLP_STAGE, ATTENTION_STAGE = "block", "mlp", "attention"
STAGES = (BLOCK_STAGE, MLP_STAGE, ATTENTION_STAGE)
IMPORTANCE_METRICS = ("ppl", "kl")
SEARCH_MODES = ("exact", "fast")
# The flat keys the fast mode's settings had before `FastSearchConfig` (configs, records and progress files written
# then): `fast_search_<name>` is `fast_search.<name>`. `upgrade_config_dict` maps them.
LEGACY_FAST_SEARCH_PREFIX = "fast_search_"
_DEVICE_NAME = re.compile(DEVICE_NAME_PATTERN)


def calibration_set(stage: str) -> str:
    """The calibration set a stage scores on: `"block"` (block stage) or `"width"` (MLP and attention stages)."""
    return "block" if stage == BLOCK_STAGE else "width"


@dataclass
class FastSearchConfig(ConfigMixin):
    """Settings of the fast search mode (`MultiPrunerConfig.search_mode="fast"`), unused by the exact search.

    The fast mode races the candidates over growing prefixes of the calibration sequences (successive halving) and
    chooses, on all sequences, among those still in the race (see `scoring/selector.py`).

    Args:
        first_sequences (`int`): sequences of the first round, on which every candidate is scored; each later round
            doubles the prefix, the last one covers all sequences.
        keep (`float`): share of a round's candidates (rounded up) that go on to the next round, those with the lowest
            totals on the round's prefix; in (0, 1].
        screen (`float`, *optional*): share of a step's candidates that race, those that did least damage when last
            scored (their mean objective increase per calibration sequence over that step's model); candidates whose
            damage is not known (never scored, or near a unit removed or shrunk since: see `screen_radius`) race too,
            the others sit the step out; in (0, 1]. `None` (default) races every candidate at every step. The screen
            trades quality for work: on whole SmolLM2 searches at 4,608 calibration tokens (screen 0.25, tie z 1) it
            did 10.5-12.4x less work than the plain evaluation, against 5.2-5.5x without it, and ended 3.7% above the
            exact search's calibration perplexity on MultiPruner 20% and 10.7% above it on BlockPruner 20%, where the
            fast mode without it ended 3.0% below and on the exact model (`benchmarks/RESULTS.md`, "The fast mode's
            default"): a damage last measured steps ago goes stale, and a greedy search compounds a missed step.
        screen_radius (`int`): with a screen, a removed or shrunk unit makes the damage of the candidates of its layer
            and of this many layers on each side unknown, so they race at the next step (a removal changes its
            neighbours most). 0 forgets only the changed layer's own candidate (the first screen).
        tie_z (`float`, *optional*): a candidate the halving would drop stays in the race while the round's leader is
            not clearly ahead of it: the mean of its per-sequence objective differences from the leader's, over the
            round's sequences (from 2 on), is at most this many standard errors (a paired test); such near ties go on
            to be decided on more sequences. `None` (default) keeps the halving alone. On SmolLM2 it made 5 more of 32
            exact choices behind the screen for 11% more work, and none without it.
    """

    first_sequences: int = option(1, "sequences of the first round; each later round doubles them")
    keep: float = option(0.5, "share of a round's candidates that go on to the next round, in (0, 1]")
    screen: Optional[float] = option(
        None, "share of a step's candidates that race, those that did least damage when last scored (none: all)"
    )
    screen_radius: int = option(1, "layers on each side of a removal whose candidates' damage is forgotten")
    tie_z: Optional[float] = option(
        None, "keep candidates the round's leader is not ahead of by more than this many standard errors (none: off)"
    )

    CONFIG_NAME: ClassVar[str] = "fast_search_config.json"

    def __post_init__(self) -> None:
        check_positive_int("fast_search.first_sequences", self.first_sequences)
        keep = self.keep
        if not is_number(keep) or not 0 < keep <= 1:
            raise ValueError(f"`fast_search.keep` must be a share in (0, 1], got {keep!r}.")
        screen = self.screen
        if screen is not None and (not is_number(screen) or not 0 < screen <= 1):
            raise ValueError(f"`fast_search.screen` must be a share in (0, 1], or None, got {screen!r}.")
        radius = self.screen_radius
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ValueError(f"`fast_search.screen_radius` must be a number of layers >= 0, got {radius!r}.")
        tie_z = self.tie_z
        if tie_z is not None and (not is_number(tie_z) or tie_z < 0):
            raise ValueError(f"`fast_search.tie_z` must be a number of standard errors >= 0, or None, got {tie_z!r}.")


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A `MultiPrunerConfig.to_dict()` as this version writes it, from one of any version: the flat
    `fast_search_<name>` keys of configs, records and progress files written before `FastSearchConfig` become
    `fast_search: {<name>: ...}` (the one place that maps them). Other keys are kept as they are."""
    legacy = {key for key in data if key.startswith(LEGACY_FAST_SEARCH_PREFIX)}
    if not legacy:
        return data
    nested = dict(data.get("fast_search") or {})
    nested.update((key[len(LEGACY_FAST_SEARCH_PREFIX):], data[key]) for key in sorted(legacy))
    return {**{key: value for key, value in data.items() if key not in legacy}, "fast_search": nested}


@dataclass
class MultiPrunerConfig(ConfigMixin):
    """Configuration of a training-free MultiPruner search.

    The search removes structure in three stages, in this order: residual blocks (whole attention or MLP sub-blocks),
    MLP intermediate channels, attention heads (whole KV groups under GQA). Stage targets are cumulative shares of
    `target_ratio` given by `pruning_distribution`. A distribution of `(1, 0, 0)` is BlockPruner
    (see [`MultiPrunerConfig.blockpruner`]).

    Args:
        target_ratio (`float`): share of **all** model parameters (embeddings and `lm_head` included) to remove, in (0, 1).
        pruning_distribution (`tuple[float, float, float]`): relative budget of the block, MLP-channel and
            attention-head stages (normalised to sum 1). Defaults to the reference `(44, 52, 4)`.
        mlp_channel_group_size (`int`): intermediate channels removed per MLP step (reference: 1024).
        attn_channel_group_size (`int`, *optional*): query channels removed per attention step; must be a multiple of
            one whole KV group (`num_attention_heads / num_key_value_heads * head_dim`). Defaults to one KV group.
        width_alignment (`int`): MLP group sizes must be multiples of it, so pruned widths stay friendly to int4
            group-wise compression and CPU GEMM kernels (128 by default).
        weight_reorder (`bool`): reorder channels/heads once by L1 weight magnitude before the width stages, so each
            step removes the least important tail group (reference default).
        calibration_dataset (`str`): `"alpaca"` (Hub `tatsu-lab/alpaca`), `"wikitext2"`, `"ptb"`, `"c4"`, any Hub
            dataset name, or a local `.txt`/`.json`/`.jsonl`/`.parquet` file.
        calibration_text_column (`str`): column holding the text for table-like datasets.
        num_calibration_samples_block (`int`): calibration rows for the block stage (reference: 256).
        num_calibration_samples_width (`int`): calibration rows for the width stages (reference: 128).
        sequence_length (`int`): tokens per calibration sequence (reference: 2048).
        batch_size (`int`): sequences per forward pass.
        seed (`int`): seed of the calibration row sampling (reference: 42).
        block_types (`tuple[str, ...]`): which sub-blocks the block stage may remove: `"attention"`, `"mlp"` or both.
        accelerated_search (`bool`): reuse cached hidden states and stop losing candidates early. It makes the same
            choices as the plain search; switch it off only to compare.
        importance_metric (`str`): what a candidate is scored by, summed over the calibration sequences: `"ppl"` (the
            reference's: each sequence's mean next-token NLL, i.e. calibration perplexity) or `"kl"` (each sequence's
            mean KL divergence of the next-token distribution from the original unpruned model's; it uses the whole
            distribution, not one label per token). Records hold the calibration perplexity either way.
        search_mode (`str`): `"exact"` scores every candidate on all calibration sequences (stopping only those that
            provably cannot win) and makes the plain search's choices; `"fast"` races the candidates over growing
            prefixes of the calibration sequences (successive halving) and chooses, on all sequences, among those still
            in the race. Needs `accelerated_search`.
        fast_search (`FastSearchConfig` or `dict`): the fast mode's settings (first round, share kept, screen, tie
            rule); see [`FastSearchConfig`].
        head_chunk_size (`int`): positions per chunk of the final norm + `lm_head` + loss, which bounds the logits'
            memory (`nll.head_chunk_bytes`); the per-sequence losses are the unchunked ones.
        max_steps (`int`, *optional*): stop after this many greedy steps even below the target ratio (BlockPruner's
            "number of blocks to delete" is `max_steps` with a block-only distribution).
        cache_device (`str`, *optional*): where the accelerated search keeps its cached hidden states (one tensor per
            decoder layer and batch). By default each layer's inputs stay on the device that layer runs on; `"cpu"`
            keeps them in RAM and moves one layer's inputs to the device for each candidate (for models whose cache
            does not fit next to the weights, e.g. 70B on GPUs). It never changes the search's choices.
    """

    target_ratio: float = option(0.20, "share of all model parameters to remove, in (0, 1)")
    pruning_distribution: tuple[float, float, float] = option(
        (44.0, 52.0, 4.0), "relative budget of the block, MLP-channel and attention-head stages"
    )
    mlp_channel_group_size: int = option(1024, "intermediate channels removed per MLP step")
    attn_channel_group_size: Optional[int] = option(
        None, "query channels removed per attention step, a multiple of one KV group (default: one KV group)"
    )
    width_alignment: int = option(128, "MLP group sizes must be multiples of it", advanced=True)
    weight_reorder: bool = option(
        True, "reorder channels and heads once by L1 weight magnitude before the width stages", advanced=True
    )
    calibration_dataset: str = option(
        "alpaca", "alpaca, wikitext2, ptb, c4, a Hub dataset name, or a local .txt/.json/.jsonl/.parquet file"
    )
    calibration_text_column: str = option("text", "column holding the text for table-like datasets")
    num_calibration_samples_block: int = option(256, "calibration rows for the block stage")
    num_calibration_samples_width: int = option(128, "calibration rows for the width stages")
    sequence_length: int = option(2048, "tokens per calibration sequence")
    batch_size: int = option(2, "sequences per forward pass")
    seed: int = option(42, "seed of the calibration row sampling")
    block_types: tuple[str, ...] = option(
        ("attention", "mlp"), "which sub-blocks the block stage may remove: attention, mlp or both"
    )
    accelerated_search: bool = option(
        True, "reuse cached hidden states and stop losing candidates early (same choices as the plain search)",
        advanced=True,
    )
    importance_metric: str = option("ppl", "what a candidate is scored by, summed over the calibration sequences",
                                    choices=IMPORTANCE_METRICS)
    search_mode: str = option(
        "exact", "exact makes the reference's choices; fast races the candidates over growing prefixes",
        choices=SEARCH_MODES,
    )
    fast_search: FastSearchConfig = option(help="the fast mode's settings", default_factory=FastSearchConfig)
    head_chunk_size: int = option(512, "positions per chunk of the final norm + lm_head + loss", advanced=True)
    max_steps: Optional[int] = option(None, "stop after this many greedy steps even below the target ratio")
    cache_device: Optional[str] = option(
        None, "where the accelerated search keeps its cached hidden states (default: each layer's device)"
    )

    CONFIG_NAME: ClassVar[str] = CONFIG_NAME

    def __post_init__(self) -> None:
        self.pruning_distribution = tuple(float(x) for x in self.pruning_distribution)
        self.block_types = tuple(self.block_types)
        if not isinstance(self.fast_search, FastSearchConfig):
            if not isinstance(self.fast_search, dict):
                raise ValueError(f"`fast_search` must be a FastSearchConfig or a JSON object, got "
                                 f"{type(self.fast_search).__name__}.")
            self.fast_search = FastSearchConfig.from_dict(self.fast_search)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ValueError` with an actionable message on any inconsistent setting."""
        ratio = self.target_ratio
        if not is_number(ratio) or not 0 < ratio < 1:
            raise ValueError(f"`target_ratio` must be a number in (0, 1) (a share of all parameters), got {ratio!r}.")
        dist = self.pruning_distribution
        if len(dist) != 3:
            raise ValueError(f"`pruning_distribution` needs 3 parts (blocks, MLP channels, attention heads), got {dist}.")
        if any(math.isnan(x) or x < 0 for x in dist) or sum(dist) <= 0:
            raise ValueError(
                f"`pruning_distribution` parts must be non-negative with a positive sum, got {dist}."
            )
        for name in (
            "mlp_channel_group_size",
            "width_alignment",
            "num_calibration_samples_block",
            "num_calibration_samples_width",
            "sequence_length",
            "batch_size",
            "head_chunk_size",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("attn_channel_group_size", "max_steps"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.mlp_channel_group_size % self.width_alignment:
            raise ValueError(
                f"`mlp_channel_group_size` ({self.mlp_channel_group_size}) must be a multiple of `width_alignment` "
                f"({self.width_alignment}) so every pruned MLP width stays aligned."
            )
        unknown = set(self.block_types) - {"attention", "mlp"}
        if unknown or not self.block_types:
            raise ValueError(f"`block_types` must be a non-empty subset of ('attention', 'mlp'), got {self.block_types}.")
        if self.importance_metric not in IMPORTANCE_METRICS:
            raise ValueError(f"`importance_metric` must be one of {IMPORTANCE_METRICS}, got {self.importance_metric!r}.")
        if self.search_mode not in SEARCH_MODES:
            raise ValueError(f"`search_mode` must be one of {SEARCH_MODES}, got {self.search_mode!r}.")
        if self.search_mode == "fast" and not self.accelerated_search:
            raise ValueError("`search_mode='fast'` races candidates over cached hidden states: it needs "
                             "`accelerated_search=True`.")
        if self.cache_device is not None:
            _check_device_name("cache_device", self.cache_device)
        if not isinstance(self.calibration_dataset, str) or not self.calibration_dataset:
            raise ValueError("`calibration_dataset` must be a dataset name or a path to a local file.")

    # ------------------------------------------------------------------ derived values
    @property
    def stage_targets(self) -> dict[str, float]:
        """Cumulative ratio each stage must reach: `T*a`, `T*(a+b)`, `T` (normalised distribution)."""
        a, b, c = (x / sum(self.pruning_distribution) for x in self.pruning_distribution)
        return {BLOCK_STAGE: self.target_ratio * a, MLP_STAGE: self.target_ratio * (a + b),
                ATTENTION_STAGE: self.target_ratio}

    @property
    def active_stages(self) -> tuple[str, ...]:
        return tuple(stage for stage, share in zip(STAGES, self.pruning_distribution) if share > 0)

    @property
    def is_blockpruner(self) -> bool:
        return self.active_stages == (BLOCK_STAGE,)

    @classmethod
    def blockpruner(cls, target_ratio: float = 0.20, **kwargs: Any) -> "MultiPrunerConfig":
        """BlockPruner (Zhong et al., 2024): only whole attention/MLP sub-blocks, 128 calibration rows by default.

        As in BlockPruner, the calibration loss then leaves out `model.config.pad_token_id` (nothing when the model has
        no pad id) instead of MultiPruner's EOS id (`nll.reference_ignore_index`).
        """
        kwargs.setdefault("num_calibration_samples_block", 128)
        return cls(target_ratio=target_ratio, pruning_distribution=(1.0, 0.0, 0.0), **kwargs)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # `fast_search` as a nested dict
        data["pruning_distribution"] = list(self.pruning_distribution)
        data["block_types"] = list(self.block_types)
        return data

    @classmethod
    def upgrade_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Flat `fast_search_<name>` keys of earlier versions nested (see [`upgrade_config_dict`])."""
        return upgrade_config_dict(data)


@dataclass
class CompensationConfig(ConfigMixin):
    """Settings of the compensation after pruning (`compensation.py`): a least-squares refit of the kept input columns
    of every narrowed attention and MLP output projection, on the search's calibration text, toward the pruned
    weights. Give one to `prune` / `apply` (or `--compensate` on the command line) to compensate.

    Args:
        alpha (`float`): ridge strength toward the pruned weights, relative to the mean diagonal of the inputs' Gram
            matrix (0.1: measured best on SmolLM2-135M, `benchmarks/compensation.py`).
    """

    CONFIG_NAME: ClassVar[str] = "compensation_config.json"

    alpha: float = option(0.1, "ridge strength of the refit toward the pruned weights")

    def __post_init__(self) -> None:
        if not is_number(self.alpha) or not self.alpha > 0:
            raise ValueError(f"The compensation's ridge strength (`alpha`) must be a positive number, got "
                             f"{self.alpha!r}.")


def compensation_from_arguments(compensation: Any = None, compensate: Optional[bool] = None,
                                compensation_alpha: Optional[float] = None) -> Optional[CompensationConfig]:
    """The `CompensationConfig` that `prune` / `apply` arguments ask for, including the spelling of earlier versions
    (`compensate=True, compensation_alpha=x`, or a bool in `compensation`'s place), which still works with a
    `FutureWarning` naming the new one."""
    if isinstance(compensation, bool):  # `compensate` was the argument at this position
        compensation, compensate = None, compensation
    if compensate is None and compensation_alpha is None:
        return compensation
    if compensation is not None:
        raise ValueError("Give `compensation=CompensationConfig(...)` alone, without `compensate` or "
                         "`compensation_alpha`.")
    alpha = CompensationConfig().alpha if compensation_alpha is None else compensation_alpha
    new = f"compensation=CompensationConfig(alpha={alpha!r})" if compensate else "compensation=None"
    warnings.warn(f"`compensate` and `compensation_alpha` are deprecated and will be removed; pass `{new}` instead.",
                  FutureWarning, stacklevel=user_stacklevel())
    return CompensationConfig(alpha=alpha) if compensate else None


def _check_device_name(name: str, value: Any) -> None:
    """A device name such as `"cpu"`, `"cuda"` or `"cuda:1"` (whether it exists is checked when it is used)."""
    if not isinstance(value, str) or not _DEVICE_NAME.fullmatch(value):
        raise ValueError(f"`{name}` must be a device name such as 'cpu', 'cuda' or 'cuda:1', got {value!r}.")
