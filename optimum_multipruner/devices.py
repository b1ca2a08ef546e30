"""Where a model runs, including models dispatched by accelerate (`device_map=...`): each module's execution device,
the placements pruning refuses (offloaded weights, decoder layers split over devices), and moving layer call
arguments once per device.

accelerate is not imported: its hooks are read through the attributes it sets (`compat.accelerate_hook`, and on each
`AlignDevicesHook` `execution_device` and `offload`; a `SequentialHook` holds several in `hooks`).
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Optional, Union

import torch
from torch import nn

from . import compat
from .architectures import ArchitectureAdapter

DeviceLike = Union[str, int, torch.device]


def _hooks(module: nn.Module) -> tuple:
    """accelerate hooks attached to `module` (a `SequentialHook` flattened)."""
    hook = compat.accelerate_hook(module)
    if hook is None:
        return ()
    return tuple(getattr(hook, "hooks", (hook,)))


def _holds_no_weights(module: nn.Module) -> bool:
    """Whether `module`'s own weights are offloaded by accelerate or meta placeholders."""
    return (any(getattr(hook, "offload", False) for hook in _hooks(module))
            or any(p.device.type == "meta" for p in module.parameters(recurse=False)))


def as_device(device: DeviceLike) -> torch.device:
    """`torch.device` of a device name, index (a CUDA index, as in accelerate device maps) or device."""
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def execution_device(module: nn.Module, default: Optional[torch.device] = None) -> torch.device:
    """The device `module` computes on: its accelerate hook's `execution_device` when it has one, else the device of
    its first parameter or buffer; for a module without either, `default` (else the CPU)."""
    for hook in _hooks(module):
        if getattr(hook, "execution_device", None) is not None:
            return as_device(hook.execution_device)
    tensor = next(chain(module.parameters(), module.buffers()), None)
    if tensor is not None:
        return tensor.device
    return torch.device("cpu") if default is None else default


def decoder_layer_devices(model: nn.Module, layers: nn.ModuleList) -> list[torch.device]:
    """The execution device of each decoder layer; a layer left without weights (both sub-blocks removed) computes
    where it is fed: on the previous layer's device (the input embedding's for the first)."""
    device = execution_device(model.get_input_embeddings())
    devices = []
    for layer in layers:
        device = execution_device(layer, default=device)
        devices.append(device)
    return devices


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate hooks place (parts of) the model."""
    return any(_hooks(module) for module in model.modules())


def check_placement(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """`ValueError` unless every weight is resident on a device and each decoder layer computes on one device.

    Accepted: a model on one device, or dispatched by accelerate over several devices (GPUs, or GPUs and CPU layers
    that also run on the CPU). Refused: weights accelerate keeps offloaded (meta placeholders streamed in for each
    forward; pruning slices weights in place), decoder layers split over devices, and a model spread over devices
    without accelerate's hooks (its forward cannot run).
    """
    layers = adapter.decoder_layers(model)
    in_layers = {id(module) for module in layers.modules()}
    offloaded_layers = [i for i, layer in enumerate(layers) if any(map(_holds_no_weights, layer.modules()))]
    offloaded_others = [name for name, module in model.named_modules()
                        if id(module) not in in_layers and _holds_no_weights(module)]
    if offloaded_layers or offloaded_others:
        where = [f"decoder layers {offloaded_layers}"] if offloaded_layers else []
        where += offloaded_others[:4] + (["..."] if len(offloaded_others) > 4 else [])
        how = (
            "Load the model so every weight fits on a device: use more GPUs, or give the GPUs more room with "
            "`max_memory` (e.g. `from_pretrained(..., device_map='auto', max_memory={0: '78GiB', 1: '78GiB'})`), "
            "or load it whole on the CPU."
        )
        if not is_dispatched(model):
            how = "Load the model with real weights first."
        raise ValueError(
            f"Parts of the model hold no real weights ({', '.join(where)}): they are on the meta device, offloaded "
            "by accelerate (to the CPU or disk, streamed in for each forward) or not loaded. Pruning slices weights "
            f"in place, so every weight must be resident on a device. {how}"
        )
    for i, layer in enumerate(layers):
        hooked = {execution_device(module) for module in layer.modules() if _hooks(module)}
        devices = hooked or {p.device for p in layer.parameters()}
        if len(devices) > 1:
            raise ValueError(
                f"Decoder layer {i} is split over devices {sorted(map(str, devices))}; keep each decoder layer whole "
                "on one device (`device_map='auto'` does, through the model's `_no_split_modules`)."
            )
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1 and not is_dispatched(model):
        raise ValueError(
            f"The model is spread over several devices ({sorted(map(str, devices))}) without accelerate's dispatch "
            "hooks, so its forward cannot run. Load it with `device_map=...` (or `accelerate.dispatch_model`), or on "
            "one device."
        )


def check_device_available(device: DeviceLike, what: str) -> None:
    """`ValueError` if `device` (a CUDA device, say) does not exist on this machine."""
    device = as_device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"{what} is {device}, but this machine has {count} CUDA device(s).")


def move_to_device(value: Any, device: torch.device, moved: Optional[dict] = None) -> Any:
    """`value` (a tensor, or tuples/lists/dicts holding tensors) with every tensor on `device`.

    `moved` memoizes copies by (tensor, device): arguments shared by many layers are copied once per device.
    """
    moved = {} if moved is None else moved
    if isinstance(value, torch.Tensor):
        key = (id(value), device)
        if key not in moved:
            moved[key] = (value, value.to(device))  # keep `value` alive so its id is not reused
        return moved[key][1]
    if isinstance(value, dict):
        return {k: move_to_device(v, device, moved) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        items = [move_to_device(v, device, moved) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value
