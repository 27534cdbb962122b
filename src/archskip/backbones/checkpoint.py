"""Reading original (Lightning) checkpoints safely: torch.load(weights_only=True) only, clear errors."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .spec import BackboneError


class CheckpointError(BackboneError):
    """The checkpoint is unreadable, unsafe to read, or does not have the expected original layout."""


def torch_detail(err: Exception) -> str:
    """The line of torch's weights_only error that says what it refused (a GLOBAL, an opcode), else its first line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hits = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln]
    first = (hits or lines or [type(err).__name__])[0]
    return first.split(". ")[0].rstrip(".")  # drop torch's advice to allowlist the global


def read_checkpoint(path: str | os.PathLike[str], saved_name: str = "state_dict.pt") -> Any:
    """torch.load with weights_only=True; anything that needs arbitrary objects becomes a CheckpointError."""
    name = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = torch_detail(e)
        if "GLOBAL" not in detail:  # e.g. "Unsupported operand 110": not a pickle at all
            raise CheckpointError(
                f"cannot read {name!r} as a torch checkpoint with torch.load(weights_only=True) (torch said: {detail}); "
                "archskip refuses to unpickle arbitrary objects, so it does not retry without weights_only"
            ) from None
        raise CheckpointError(
            f"{name!r} needs arbitrary Python objects to load, and archskip refuses to unpickle arbitrary objects "
            f"(it reads only tensors and plain containers, via torch.load(weights_only=True)); torch said: {detail}. "
            "If you trust the file, extract the weights elsewhere with "
            f"torch.save(torch.load(path, weights_only=False)['state_dict'], '{saved_name}') and load that."
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read {name!r} as a torch checkpoint: {e}") from None


def state_dict_of(obj: Any, path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict inside a Lightning checkpoint ({"state_dict": ...}) or a bare state dict."""
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{os.fspath(path)!r} holds a {type(obj).__name__}, not a state dict or a Lightning checkpoint")
    not_tensors = sorted(str(k) for k, v in sd.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{os.fspath(path)!r}: expected a Lightning dict with 'state_dict' or a bare state dict; "
            f"these entries are not tensors: {', '.join(not_tensors[:20])}"
        )
    return dict(sd)
