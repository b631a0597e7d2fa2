"""Checkpoints and final models as safetensors files, written atomically.

Nothing is unpickled: tensors go in a safetensors file and everything else in its
JSON metadata. Every file is written to a temporary name, flushed to disk and then
renamed over the target, so a run killed at any moment leaves either the old file or
the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from privfl.errors import DataError

FORMAT = "privfl-checkpoint-1"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, nothing between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Save a federation state (:meth:`privfl.Federation.state_dict`) to ``path``."""
    tensors: dict[str, torch.Tensor] = {"params": state["params"].contiguous()}
    values: dict[str, dict[str, Any]] = {}
    for component, component_state in state["components"].items():
        for key, value in component_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{component}/{key}"] = value.contiguous()
            else:
                values.setdefault(component, {})[key] = value
    meta = {
        "format": FORMAT,
        "round": state["round"],
        "values": values,
        "settings": dict(state.get("settings", {})),
    }
    # Sorted keys: the same state gives the same bytes, whatever order tables were given in.
    text = json.dumps(meta, sort_keys=True)
    write_atomic(path, save_safetensors(tensors, metadata={"privfl": text}))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    try:
        raw = path.read_bytes()
        tensors = load_safetensors(raw)
        meta = json.loads(_metadata(raw)["privfl"])
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise DataError(f"{path} is not a privfl checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has checkpoint format {meta.get('format')!r}, need {FORMAT!r}")
    components: dict[str, dict[str, Any]] = {k: dict(v) for k, v in meta["values"].items()}
    for name, tensor in tensors.items():
        if name != "params":
            component, key = name.split("/", 1)
            components.setdefault(component, {})[key] = tensor
    return {
        "round": meta["round"],
        "params": tensors["params"],
        "components": components,
        "settings": meta.get("settings", {}),
    }


def save_model(path: Path, model: torch.nn.Module) -> None:
    """Save ``model``'s state dict as safetensors (load with ``safetensors.torch.load_file``)."""
    state = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    write_atomic(path, save_safetensors(state))


def _metadata(raw: bytes) -> dict[str, str]:
    """Read the ``__metadata__`` of a safetensors byte string (its JSON header)."""
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]).get("__metadata__", {})
