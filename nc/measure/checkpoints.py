"""A checkpoint is data, not code: weights read with `torch.load(weights_only=True)` (tensors, numbers, strings,
containers), a file that needs full unpickling refused unless the caller trusts it, and a state dict that does not
fit the model an error naming the first missing and unexpected keys.

- `read(path, trust=False)`: the object in the file. A pickle that carries code (any class or callable outside
  torch's allow-list) is refused by torch before anything runs; the error says why and names `--trust-checkpoint`.
- `state_dict(obj, path, key=None)`: the weights inside: the object itself when it is a flat mapping of tensors, the
  value under `key` (dotted for nested mappings), or under the one of STATE_KEYS it has ("model", "state_dict", ...,
  as our own runs and most training scripts save them).
- `load_into(model, path, key=None, trust=False)`: both, then model.load_state_dict (strict), DDP's "module."
  prefix dropped when every key has it and the model's keys do not.
- `series(pattern)`: the files a glob matches, with the epoch each name carries (its last integer), sorted.
"""
from __future__ import annotations

import glob
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

STATE_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net", "network", "weights")
TRUST_FLAG = "--trust-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file (and the key)."""


def read(path, trust: bool = False, map_location="cpu"):
    """The object saved in `path`, read as data (weights_only=True) unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        why = next((line for line in reason if "Unsupported global" in line or "GLOBAL" in line), reason[0])
        raise CheckpointError(
            f"{path}: refused: it cannot be read as plain data (weights_only=True) because it needs full "
            f"unpickling, which can run arbitrary code ({why.strip()}). If you trust the file and where it came "
            f"from, pass {TRUST_FLAG}; better, re-save only its weights: torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None


def _is_state(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_dict(obj, path, key: str | None = None) -> dict:
    """The weights in a checkpoint object (module docstring)."""
    if key is not None:
        value = obj
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                have = sorted(map(str, value)) if isinstance(value, Mapping) else type(value).__name__
                raise CheckpointError(f"{path}: key {key!r}: no {part!r} in the checkpoint (it has: {have})")
            value = value[part]
        obj = value
    elif not _is_state(obj) and isinstance(obj, Mapping):
        found = [k for k in STATE_KEYS if _is_state(obj.get(k))]
        if not found:
            raise CheckpointError(f"{path}: not a state dict and none of the keys {list(STATE_KEYS)} holds one "
                                  f"(it has: {sorted(map(str, obj))}); name the key with --weights-key")
        obj = obj[found[0]]
    if isinstance(obj, torch.nn.Module):  # a whole pickled model (only with trust)
        obj = obj.state_dict()
    if not _is_state(obj):
        raise CheckpointError(f"{path}: key {key!r} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)


def fit(model: torch.nn.Module, state: dict, path) -> None:
    """model.load_state_dict(state), strict; keys that do not fit are one error naming the first few."""
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DDP wrapper
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{path}: its keys do not fit the model: {len(missing)} missing (first: "
                              f"{missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]}); check "
                              f"--model / --num-classes, or pick the weights inside the file with --weights-key")
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"{path}: key {k!r} has shape {got} in the file but {want} in the model "
                              f"({len(wrong)} such keys); check --model / --num-classes")
    model.load_state_dict(state)


def load_into(model, path, key: str | None = None, trust: bool = False):
    """Read `path` (as data unless trust), pick its weights (`key`) and load them into `model` (strict)."""
    fit(model, state_dict(read(path, trust), path, key), path)
    return model


def epoch_of(path) -> int:
    """The epoch a checkpoint's file name carries: the last integer in its name (run/epoch-012.pt -> 12)."""
    numbers = re.findall(r"\d+", Path(path).name)
    if not numbers:
        raise CheckpointError(f"{path}: no epoch number in the file name (expected e.g. epoch-12.pt)")
    return int(numbers[-1])


def series(pattern: str) -> list[tuple[int, Path]]:
    """(epoch, path) of every file the glob matches, sorted by epoch; none, or two of one epoch, is an error."""
    files = sorted(glob.glob(str(Path(pattern).expanduser())))
    if not files:
        raise CheckpointError(f"--checkpoints {pattern!r}: no file matches")
    out = sorted((epoch_of(f), Path(f)) for f in files)
    epochs = [e for e, _ in out]
    twice = sorted({e for e in epochs if epochs.count(e) > 1})
    if twice:
        raise CheckpointError(f"--checkpoints {pattern!r}: several files for epoch(s) {twice}: "
                              f"{[str(p) for e, p in out if e in twice][:4]}")
    return out
