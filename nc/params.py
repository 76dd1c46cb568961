"""Run parameters: one YAML file = one dataset x network cell, merged over its profile's `_defaults.yaml`.

`load(path)` returns a plain dict with every key of SCHEMA filled in; a bad file raises ParameterError
naming the file and the key. `digest(params)` hashes what determines the results (not where or how
fast they are computed), so a finished cube is reused only when its parameters are unchanged.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from pathlib import Path

import yaml

DATASETS = ("demo", "mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "stl10", "imagenet")
NETWORK_PATTERN = r"vgg(11|13|16|19)|resnet(18|34|50|101|152)|densenet\d+"
REQUIRED = object()


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _opt(check):
    return lambda v: v is None or check(v)


def _pos_int(v):
    return _int(v) and v > 0


def _str(v):
    return isinstance(v, str) and v != ""


# key: (default, check, what the check wants, whether it changes results)
SCHEMA = {
    "dataset": (REQUIRED, lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}", True),
    "network": (REQUIRED, lambda v: isinstance(v, str) and re.fullmatch(NETWORK_PATTERN, v) is not None,
                "vgg11/13/16/19, resnet18/34/50/101/152 or densenet<depth>", True),
    "epochs": (REQUIRED, _pos_int, "a positive integer", True),
    "lrs": (REQUIRED, lambda v: isinstance(v, list) and len(v) > 0 and all(_num(x) and x > 0 for x in v)
            and len(set(v)) == len(v), "a non-empty list of distinct positive learning rates", True),
    "n_per_class": (None, _opt(_pos_int), "a positive integer or null (all images)", True),
    "test_n_per_class": (None, _opt(_pos_int), "a positive integer or null (all test images)", True),
    "image_size": (None, _opt(_pos_int), "a positive integer or null (native size)", True),
    "width": (1.0, lambda v: _num(v) and v > 0, "a positive number (channel multiplier)", True),
    "growth_rate": (None, _opt(_pos_int), "a positive integer or null (the network's default)", True),
    "memory_efficient": (False, lambda v: isinstance(v, bool), "true or false", False),
    "momentum": (0.9, lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)", True),
    "weight_decay": (5e-4, lambda v: _num(v) and v >= 0, "a non-negative number", True),
    "batch_size": (128, _pos_int, "a positive integer", True),
    "lr_milestones": ([1 / 3, 2 / 3], lambda v: isinstance(v, list) and all(_num(x) and 0 < x < 1 for x in v)
                      and v == sorted(v), "an increasing list of fractions of the epochs in (0, 1)", True),
    "lr_gamma": (0.1, lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]", True),
    "snapshot_epochs": (50, lambda v: _pos_int(v) or (isinstance(v, list) and len(v) > 0
                                                      and all(_pos_int(x) for x in v)),
                        "a count of log-spaced epochs or a list of epochs", True),
    "tpt_threshold": (0.999, lambda v: _num(v) and 0 < v <= 1, "a train accuracy in (0, 1]", True),
    "seed": (0, lambda v: _int(v) and v >= 0, "a non-negative integer", True),
    "device": ("auto", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
               "auto, cpu, cuda, cuda:N or mps", False),
    "robustness_images": (100, lambda v: _int(v) and v >= 0, "a non-negative integer (0 turns DeepFool off)", True),
    "deepfool_overshoot": (0.02, lambda v: _num(v) and v >= 0, "a non-negative number", True),
    "deepfool_max_iter": (50, _pos_int, "a positive integer", True),
    "fig1_classes": (3, lambda v: _int(v) and v >= 0, "a non-negative integer", True),
    "fig1_samples": (20, _pos_int, "a positive integer", True),
    "data_source": ("auto", lambda v: v in ("auto", "torchvision", "npz"),
                    "auto (npz when npz_dir / NC_NPZ_DIR is set, else torchvision), torchvision or npz", True),
    "npz_dir": (None, _opt(_str), "a directory of .npz subsets or null", False),
    "npz_file": (None, _opt(_str), "a file name inside npz_dir or null", True),
    "data_root": (None, _opt(_str), "a torchvision download directory or null", False),
    "eval_batch_size": (1000, _pos_int, "a positive integer", False),
}


class ParameterError(ValueError):
    """A parameter file is unreadable or a key is unknown, missing, mistyped or impossible."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `5e-4` is a number (PyYAML's YAML 1.1 rules would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError(f"{path}: cannot read parameters: {err}") from err
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def validate(raw: dict, source: str = "<parameters>") -> dict:
    """Fill defaults and check every key; the error names `source` and the key."""
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ParameterError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(SCHEMA)})")
    out = {}
    for key, (default, check, wants, _) in SCHEMA.items():
        if key not in raw:
            if default is REQUIRED:
                raise ParameterError(f"{source}: key {key!r} is missing: it must be {wants}")
            out[key] = default
            continue
        value = raw[key]
        if not check(value):
            raise ParameterError(f"{source}: key {key!r} must be {wants}, got {value!r}")
        out[key] = value
    if isinstance(out["snapshot_epochs"], list) and max(out["snapshot_epochs"]) > out["epochs"]:
        raise ParameterError(f"{source}: key 'snapshot_epochs' lists an epoch after 'epochs' = {out['epochs']}")
    if out["network"].startswith("densenet") and (int(out["network"][8:]) - 4) % 6 and out["network"] != "densenet201":
        raise ParameterError(f"{source}: key 'network': DenseNet-BC depth must satisfy (depth - 4) % 6 == 0, "
                             f"got {out['network']!r}")
    return out


def load(path) -> dict:
    """Read a parameter file, merge it over `_defaults.yaml` beside it, validate; adds `name` and `profile`."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{path}: no such parameter file")
    merged = {}
    defaults = path.parent / "_defaults.yaml"
    if defaults.is_file() and defaults != path:
        merged.update(_read_yaml(defaults))
    merged.update(_read_yaml(path))
    source = str(path) if not defaults.is_file() else f"{path} (with {defaults.name})"
    params = validate(merged, source)
    params["name"] = path.stem
    params["profile"] = path.parent.name
    return params


def profile_files(profile_dir) -> list[Path]:
    """The parameter files of a profile directory, sorted, without `_defaults.yaml`."""
    return sorted(p for p in Path(profile_dir).glob("*.yaml") if not p.name.startswith("_"))


def select(files, only) -> list[Path]:
    """The parameter files whose cell name (the file stem, `<dataset>-<network>`) matches one of the patterns
    in `only` (shell-style, e.g. `mnist-*`; a bare dataset name `mnist` means `mnist-*`); all of them when
    `only` is empty. ValueError naming the pattern when one matches no file."""
    files = [Path(f) for f in files]
    if not only:
        return files
    keep = set()
    for pattern in only:
        hits = {f for f in files if fnmatch.fnmatchcase(f.stem, pattern) or fnmatch.fnmatchcase(f.stem, f"{pattern}-*")}
        if not hits:
            cells = ", ".join(f.stem for f in files)
            raise ValueError(f"--only {pattern!r} matches no parameter file (cells: {cells})")
        keep |= hits
    return [f for f in files if f in keep]


def digest(params: dict) -> str:
    """sha256 over the keys that change results (not device, paths or batch sizes for evaluation)."""
    keep = {k: params[k] for k, spec in SCHEMA.items() if spec[3]}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def to_yaml(params: dict) -> str:
    """The full, merged parameters as YAML text (stored in the cube)."""
    return yaml.safe_dump({k: params[k] for k in SCHEMA}, sort_keys=False)
