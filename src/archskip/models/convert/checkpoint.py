"""Reading original (Lightning) checkpoints safely: torch.load(weights_only=True) only, clear errors."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...errors import CheckpointError


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


def check_keys(keys: set[str], backbone: set[str], heads: set[str], dropped: set[str], *, require_heads: bool,
               what: str) -> None:
    """Raise CheckpointError naming every unknown key and every missing required key; `what` describes the
    expected checkpoint (e.g. "an original ViLT pretraining checkpoint for this config (12 layers, hidden 768)")."""
    required = backbone | heads if require_heads else backbone
    unknown = sorted(keys - backbone - heads - dropped)
    missing = sorted(required - keys)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {', '.join(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
    if problems:
        raise CheckpointError(f"not {what}: " + "; ".join(problems))


def load_strict(model: torch.nn.Module, state: dict[str, Tensor], *, set_later: frozenset[str] = frozenset()) -> None:
    """Load every key of `model` except `set_later`, naming any missing or unexpected key in a CheckpointError first."""
    want = set(model.state_dict()) - set_later
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise CheckpointError(f"converted state does not fit {type(model).__name__}: missing {missing or 'none'}; "
                              f"unexpected {unexpected or 'none'}")
    result = model.load_state_dict(state, strict=not set_later)
    if set_later and (result.unexpected_keys or not set(result.missing_keys) <= set_later):
        raise CheckpointError(f"loading into {type(model).__name__} left {result}")
