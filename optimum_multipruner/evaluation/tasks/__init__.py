"""Offline lm-eval task definitions (YAML) for the zero-shot protocol, reading local copies of the data sets."""
