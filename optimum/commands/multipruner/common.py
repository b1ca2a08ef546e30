"""What the `optimum-cli multipruner` sub-commands share: the base class that turns a user's mistake into one line,
argument types, the check of the model source made before any work, and loading a PyTorch model.

Standard library only at module level: optimum-cli imports the commands at every start-up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from argparse import ArgumentParser, ArgumentTypeError, Namespace
from typing import Any, Union

from optimum.commands.base import BaseOptimumCLICommand

from optimum_multipruner_constants import DEVICE_NAME_PATTERN

DEBUG_ENV = "MULTIPRUNER_DEBUG"
USER_ERROR_EXIT_CODE = 2  # argparse's status for a usage error
# What a user can fix: a bad value (ValueError), a missing/existing/unreadable file or an unreachable Hub (OSError),
# a package to install (ImportError). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(DEVICE_NAME_PATTERN)
_MEMORY_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMG]i?B)", re.IGNORECASE)  # the units accelerate accepts
_MEMORY_KEYS = ("cpu", "disk", "mps")


class MultiPrunerSubcommand(BaseOptimumCLICommand):
    """A `multipruner` sub-command: subclasses implement `execute()`, which `run()` calls once it has registered the
    pruned model types (`optimum_multipruner.register()`, which the optimum-cli plugin leaves out of start-up).

    A mistake the user can fix (`USER_ERRORS`) ends the command with one line on stderr and exit status 2; with
    `MULTIPRUNER_DEBUG=1` the exception propagates with its traceback instead.
    """

    GROUP = "multipruner"  # the command group its errors name

    def execute(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            import optimum_multipruner

            optimum_multipruner.register()
            self.execute()
        except USER_ERRORS as error:
            if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"optimum-cli {self.GROUP} {self.COMMAND.name}: error: {message}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)


# --------------------------------------------------------------------------- argument types
def parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_list(value: str) -> tuple[str, ...]:
    """Comma-separated words (blanks dropped)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_device(value: str) -> str:
    """`auto`, or a torch device name such as `cpu`, `cuda`, `cuda:1`."""
    if value != "auto" and not _DEVICE.fullmatch(value):
        raise ArgumentTypeError(f"expected auto or a device such as cpu, cuda or cuda:1, got {value!r}")
    return value


def _json_object(value: str, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ArgumentTypeError(f"{what} is neither a known name nor a JSON object ({error}): {value!r}") from None
    if not isinstance(parsed, dict) or not parsed:
        raise ArgumentTypeError(f"{what} must be a non-empty JSON object, got {value!r}")
    return parsed


def parse_device_map(value: str) -> Union[str, dict[str, Union[int, str]]]:
    """An accelerate placement strategy (`auto`, `balanced`, ...) or a JSON object `{module name: device}`."""
    if value in DEVICE_MAP_STRATEGIES:
        return value
    device_map = _json_object(value, f"--device-map (one of {', '.join(DEVICE_MAP_STRATEGIES)} or JSON)")
    for module, device in device_map.items():
        valid = (isinstance(device, int) and not isinstance(device, bool) and device >= 0) or (
            isinstance(device, str) and (device == "disk" or _DEVICE.fullmatch(device))
        )
        if not valid:
            raise ArgumentTypeError(f"--device-map: {module!r} goes to {device!r}; use a GPU index, a device or 'disk'")
    return device_map


def _memory_key(key: Any) -> Union[int, str]:
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
        return int(key)
    if key in _MEMORY_KEYS:
        return key
    raise ArgumentTypeError(f"--max-memory: unknown device {key!r}; use a GPU index (0, 1, ...), cpu, disk or mps")


def _memory_size(key: Any, size: Any) -> Union[int, str]:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, str) and _MEMORY_SIZE.fullmatch(size.strip()):
        return size.strip()
    raise ArgumentTypeError(f"--max-memory: {key}={size!r} is not a size; write it as 70GiB, 500MB or a byte count")


def parse_max_memory(value: str) -> dict[Union[int, str], Union[int, str]]:
    """`0=70GiB,1=70GiB,cpu=200GiB` or the same as a JSON object; GPU indices become integers (accelerate's keys)."""
    if value.lstrip().startswith("{"):
        pairs = list(_json_object(value, "--max-memory").items())
    else:
        pairs = [parse_key_value(part.strip()) for part in value.split(",") if part.strip()]
        pairs = [(key, int(size) if size.strip().isdigit() else size) for key, size in pairs]
    if not pairs:
        raise ArgumentTypeError("--max-memory needs at least one DEVICE=SIZE")
    return {_memory_key(key): _memory_size(key, size) for key, size in pairs}


# --------------------------------------------------------------------------- checks made before any work
def _looks_like_path(model: str) -> bool:
    return os.path.isabs(model) or model.startswith((".", "~")) or model.endswith(("/", os.sep)) or model.count("/") > 1


def check_model_source(model: str) -> None:
    """A local model folder, or a Hub id whose `config.json` is in the cache or can be downloaded; else an error
    saying which of the two failed and what to do."""
    if os.path.isdir(model):
        return
    if os.path.exists(model):
        raise NotADirectoryError(f"{model} is a file; give the model's folder (the one holding config.json).")
    if _looks_like_path(model):
        raise FileNotFoundError(f"The model folder {model} does not exist; check the path.")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    not_local = f"{model} is not a local folder"
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury the one line below
    try:
        hf_hub_download(model, "config.json")
    except HFValidationError:
        raise FileNotFoundError(f"{not_local} (and not a Hub id such as org/name); check the path.") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{not_local}, and the Hugging Face Hub has no such model (a private one needs `hf auth login`)."
        ) from None
    except Exception as error:  # no network, proxy, timeout: whatever the HTTP stack raises
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
            raise FileNotFoundError(
                f"{not_local}, and HF_HUB_OFFLINE=1 allows only models already in the Hugging Face cache: give a local "
                "folder, or download the model once with network access."
            ) from None
        raise ConnectionError(
            f"{not_local}, and the Hugging Face Hub cannot be reached ({type(error).__name__}): give a local model "
            "folder, or set HF_HUB_OFFLINE=1 to use the models already in the Hugging Face cache."
        ) from None
    finally:
        hub_logger.setLevel(level)


# --------------------------------------------------------------------------- PyTorch model loading
def add_model_loading_args(parser: ArgumentParser, placement: bool = True) -> None:
    """`--dtype` (and, with `placement`, `--device`, `--device-map`, `--max-memory`)."""
    group = parser.add_argument_group("model loading")
    if not placement:
        group.add_argument("--dtype", choices=DTYPES, default="auto",
                           help="dtype to load the model in (default auto: the checkpoint's own)")
        return
    group.add_argument(
        "--dtype", choices=DTYPES,
        help="dtype to load the model in; auto is the checkpoint's own (default: float32 on the CPU, auto elsewhere)",
    )
    group.add_argument("--device", type=parse_device, default="auto",
                       help="device to load and run on: auto (CUDA when present, else cpu), cpu, cuda, cuda:1, ...")
    group.add_argument(
        "--device-map", type=parse_device_map, metavar="STRATEGY_OR_JSON",
        help="spread the model over devices with accelerate: auto, balanced, balanced_low_0, sequential, or a JSON "
        "object {module name: device}; loads each weight straight onto its device (replaces --device)",
    )
    group.add_argument(
        "--max-memory", type=parse_max_memory, metavar="DEVICE=SIZE,...",
        help="memory per device for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB (or the same as JSON)",
    )


def check_model_loading_args(args: Namespace) -> None:
    """Combinations argparse cannot refuse by itself."""
    device_map = getattr(args, "device_map", None)
    if getattr(args, "max_memory", None) is not None and device_map is None:
        raise ValueError("--max-memory sets the memory per device of a --device-map; add --device-map auto.")
    if device_map is not None and args.device != "auto":
        raise ValueError("--device-map places the model itself; drop --device (or drop --device-map).")


def load_model_and_tokenizer(args: Namespace):
    """The PyTorch causal LM of `args.model` in eval mode, loaded straight onto its device(s), and its tokenizer.

    `--device auto` is this process's CUDA device when there is one (`cuda:LOCAL_RANK` under torchrun), else the CPU;
    no `--dtype` means float32 on the CPU and the checkpoint's own dtype on an accelerator or a device map.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_multipruner.distributed import local_device

    check_model_loading_args(args)
    placement: dict[str, Any] = {}
    device_map = getattr(args, "device_map", None)
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": args.max_memory}
        on_cpu = False
    else:
        name = getattr(args, "device", "cpu")  # commands that export load on the CPU and have no --device
        device = local_device() if name == "auto" else torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu.")
        on_cpu = device.type == "cpu"
        if not on_cpu:
            placement = {"device_map": {"": device}}  # load onto the device directly, not via the CPU
    dtype = args.dtype or ("float32" if on_cpu else "auto")
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=dtype if dtype == "auto" else getattr(torch, dtype), **placement
    )
    return model.eval(), AutoTokenizer.from_pretrained(args.model)
