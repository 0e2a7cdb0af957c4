"""PyTorch: state dicts encrypted at rest, and a dataset that streams encrypted CSV files.

State dicts are saved as safetensors (tensors and a JSON header, no code), or, when safetensors cannot hold
them (tensors sharing memory, values that are not tensors), in PyTorch's own format, which is loaded only
with ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors and plain containers). A
module is saved as its state dict; load the dict into a module of the same class::

    net.load_state_dict(ppml.ml.load("net.ppml", keys=keys, library="torch"))

:class:`ppml.ml.datasets.EncryptedCsvDataset` streams encrypted CSV files into a ``DataLoader``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from ppml.errors import WrongModelError
from ppml.ml.library import ModelLibrary, Payload, qualified_name, require

__all__ = ["TorchModels"]

SAFETENSORS, TORCH = "safetensors", "torch"
_ENTRIES = {SAFETENSORS: "state_dict.safetensors", TORCH: "state_dict.pt"}


def _is_tensor(value: object) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "dtype")


class TorchModels(ModelLibrary):
    name = "torch"
    modules = ("torch",)
    extra = "torch"

    def owns(self, model: object) -> bool:
        if isinstance(model, Mapping):  # a state dict
            return bool(model) and all(_is_tensor(v) for v in model.values())
        return super().owns(model) and hasattr(model, "state_dict")

    def dump(self, model: Any, *, spark: Any = None) -> Payload:
        torch = require("torch", self.extra)
        state = dict(model) if isinstance(model, Mapping) else model.state_dict()
        versions = {"torch": torch.__version__}
        try:
            safetensors_torch = require("safetensors.torch", self.extra)
            data, fmt = safetensors_torch.save(state), SAFETENSORS
            versions["safetensors"] = require("safetensors", self.extra).__version__
        except (ValueError, RuntimeError):  # shared or non-contiguous tensors: PyTorch's own format
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data, fmt = buffer.getvalue(), TORCH
        details = {"module": None if isinstance(model, Mapping) else qualified_name(model),
                   "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in state.items()}}
        return Payload({_ENTRIES[fmt]: data}, fmt, qualified_name(model), versions, details=details)

    def restore(self, files: Mapping[str, bytes], manifest: Mapping[str, Any], *, spark: Any = None,
                trusted: Sequence[str] = ()) -> Any:
        fmt = manifest.get("format")
        if fmt not in _ENTRIES or _ENTRIES[fmt] not in files:
            raise WrongModelError(f"a PyTorch model in format {fmt!r} cannot be loaded")
        data = files[_ENTRIES[fmt]]
        if fmt == SAFETENSORS:
            return require("safetensors.torch", self.extra).load(data)
        torch = require("torch", self.extra)
        return torch.load(io.BytesIO(data), weights_only=True)
