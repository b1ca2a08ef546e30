"""Helpers shared by the perplexity and zero-shot evaluations."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


@contextmanager
def evaluation_mode(model: Any) -> Iterator[None]:
    """Put a PyTorch model in eval mode with the KV cache off (`config.use_cache=False`) and restore both afterwards.

    Scoring whole sequences needs no cache, and building one costs memory on every forward. Models that are not
    `torch.nn.Module`s (an OpenVINO `OVModelForCausalLM`) are left as they are.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    config = getattr(model, "config", None)
    was_training = model.training
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if use_cache is not None:
        config.use_cache = False
    try:
        yield
    finally:
        model.train(was_training)
        if use_cache is not None:
            config.use_cache = use_cache
