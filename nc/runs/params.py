"""Run parameters: one YAML file = one dataset x network cell, merged over its profile's `_defaults.yaml`.

`load(path)` returns a plain dict with every key of SCHEMA filled in; a bad file raises ParameterError naming the
file and the key. `digest(params)` hashes what determines the results (not where or how fast they are computed),
leaving out every key whose value equals its default: adding a key whose default reproduces the old behaviour
therefore leaves every finished cube current. Changing a default changes what the old cubes mean, so it goes
with a bump of nc.runs.cube.FORMAT_VERSION (which `is_current` also checks).
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nc import data, models
from nc.data.registry import SIZES, SOURCES, STANDARDIZE
from nc.models import CLASSIFIERS, STEMS
from nc.train import losses

PRECISIONS = ("float32", "tf32", "bf16")
LOSSES = losses.LOSSES  # the registry (nc.train.losses): a loss registered there is a valid value here
ETF_BIASES = models.ETF_BIASES
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


def _class_ids(v):
    return isinstance(v, list) and len(v) >= 2 and all(_int(x) and x >= 0 for x in v) and len(set(v)) == len(v)


def _one_of(values):
    return lambda v: v in values


@dataclass(frozen=True)
class Key:
    """One parameter: its default (REQUIRED: none), the check, what the check wants (for the error message) and
    whether it changes results (then it is part of the digest, unless it equals its default)."""
    default: Any
    check: Callable[[Any], bool]
    wants: str | Callable[[], str]  # a callable: the text of a registry read when the error is raised
    changes_results: bool = True


SCHEMA = {
    "dataset": Key(REQUIRED, lambda v: v in data.REGISTRY,
                   lambda: f"a registered dataset (nc.data.registry): one of {', '.join(data.REGISTRY)}"),
    "network": Key(REQUIRED, lambda v: isinstance(v, str) and models.known(v),
                   lambda: f"a registered network (nc.models): one of {', '.join(models.REGISTRY)}, or "
                           "densenet<depth> with (depth - 4) % 6 == 0"),
    "epochs": Key(REQUIRED, _pos_int, "a positive integer"),
    "lrs": Key(REQUIRED, lambda v: isinstance(v, list) and len(v) > 0 and all(_num(x) and x > 0 for x in v)
               and len(set(v)) == len(v), "a non-empty list of distinct positive learning rates"),
    "n_per_class": Key(None, _opt(_pos_int), "a positive integer or null (all images)"),
    "test_n_per_class": Key(None, _opt(_pos_int), "a positive integer or null (all test images)"),
    "image_size": Key(None, _opt(_pos_int), "a positive integer or null (native size)"),
    "standardize": Key("channel", _one_of(STANDARDIZE),
                       "channel (train mean and SD per colour channel, as the authors' notebook) or pixel "
                       "(per pixel position, the other reading of the paper's 'pixel-wise')"),
    "class_counts": Key(None, _opt(lambda v: isinstance(v, list) and len(v) > 0 and all(_pos_int(x) for x in v)),
                        "null or a list of train images per class (one positive integer per class), overriding "
                        "n_per_class and imbalance_ratio"),
    "imbalance_ratio": Key(None, _opt(lambda v: _num(v) and v >= 1),
                           "null or a number R >= 1: the first half of the classes keep n_per_class train images, "
                           "the others n_per_class / R (Fang et al. 2021, minority collapse)"),
    "held_out_classes": Key(None, _opt(_class_ids),
                            "null or a list of at least two distinct class ids: the run trains on the other classes "
                            "and measures transfer to these (Galanti et al. 2022) and their orthogonality as OOD data "
                            "(NC5, Ammar et al. 2024) at every snapshot"),
    "ood_dataset": Key(None, _opt(lambda v: v in data.REGISTRY),
                       lambda: "null or a registered dataset (nc.data.registry) with the run's number of colour "
                               f"channels, one of {', '.join(data.REGISTRY)}: its TEST split (the run's image_size, "
                               "test_n_per_class and data seed), standardised with the run's train statistics, is "
                               "the out-of-distribution set of NC5 (Ammar et al. 2024) at every snapshot"),
    "stem": Key("small", _one_of(STEMS), "small (3x3 stride-1 stem, no max-pool: the small-image networks) or "
                "imagenet (torchvision's 224-px stems)"),
    "width": Key(1.0, lambda v: _num(v) and v > 0, "a positive number (channel multiplier)"),
    "growth_rate": Key(None, _opt(_pos_int), "a positive integer or null (the network's default)"),
    "memory_efficient": Key(False, lambda v: isinstance(v, bool), "true or false", False),
    "loss": Key("cross_entropy", _one_of(LOSSES), " or ".join(loss.description for loss in LOSSES.values())),
    "classifier": Key("learned", _one_of(CLASSIFIERS),
                      "learned or fixed_etf (the last layer's weight frozen at a seeded simplex ETF; Zhu et al. 2021)"),
    "fixed_etf_bias": Key("train", _one_of(ETF_BIASES),
                          "train (a fixed ETF classifier's bias is trained, as Zhu et al.'s code) or zero (frozen at "
                          "0)"),
    "feature_dim": Key(None, _opt(_pos_int), "null or a positive integer p: a linear projection to p features "
                       "before the classifier (Zhu et al. use p = C)"),
    "momentum": Key(0.9, lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": Key(5e-4, lambda v: _num(v) and v >= 0, "a non-negative number"),
    "batch_size": Key(128, _pos_int, "a positive integer"),
    "lr_milestones": Key([1 / 3, 2 / 3], lambda v: isinstance(v, list) and all(_num(x) and 0 < x < 1 for x in v)
                         and v == sorted(v), "an increasing list of fractions of the epochs in (0, 1)"),
    "lr_gamma": Key(0.1, lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "snapshot_epochs": Key(50, lambda v: _pos_int(v) or (isinstance(v, list) and len(v) > 0
                                                         and all(_pos_int(x) for x in v)),
                           "a count of log-spaced epochs (at most every epoch) or a list of epochs"),
    "tpt_threshold": Key(0.999, lambda v: _num(v) and 0 < v <= 1, "a train accuracy in (0, 1]"),
    "precision": Key("float32", _one_of(PRECISIONS),
                     "float32 (no TF32, no autocast), tf32 (TF32 matmuls and convolutions on CUDA) or bf16 "
                     "(bfloat16 autocast); measurement is float64 in every case"),
    "depth": Key(True, lambda v: isinstance(v, bool),
                 "true or false: collapse by depth at every block at the first snapshot, the TPT start and the "
                 "last snapshot"),
    "seed": Key(0, lambda v: _int(v) and v >= 0, "a non-negative integer: the data seed (the balanced subset, the "
                "Fig. 1 and DeepFool samples), the same for every run seed"),
    "seeds": Key([0], lambda v: isinstance(v, list) and len(v) > 0 and all(_int(x) and x >= 0 for x in v)
                 and len(set(v)) == len(v), "a non-empty list of distinct non-negative integers: the run seeds "
                 "(initialisation, batch order, a fixed ETF), one run per seed and lr on the same data"),
    "device": Key("auto", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
                  "auto, cpu, cuda, cuda:N or mps", False),
    "robustness_images": Key(100, lambda v: _int(v) and v >= 0, "a non-negative integer (0 turns DeepFool off)"),
    "deepfool_overshoot": Key(0.02, lambda v: _num(v) and v >= 0, "a non-negative number"),
    "deepfool_max_iter": Key(50, _pos_int, "a positive integer"),
    "fig1_classes": Key(3, lambda v: _int(v) and v >= 0, "a non-negative integer"),
    "fig1_samples": Key(20, _pos_int, "a positive integer"),
    "data_source": Key("auto", _one_of(SOURCES),
                       "auto (npz when npz_dir / NC_NPZ_DIR is set, else torchvision), torchvision, npz or store "
                       "(a prepared uint8 store streamed from disk: python -m nc.prepare)"),
    "store_dir": Key(None, _opt(_str), "null (the folder python -m nc.prepare writes by default) or a store folder",
                     False),
    "npz_dir": Key(None, _opt(_str), "a directory of .npz subsets or null", False),
    "npz_file": Key(None, _opt(_str), "a file name inside npz_dir or null"),
    "data_root": Key(None, _opt(_str), "a torchvision download directory or null", False),
    "eval_batch_size": Key(1000, _pos_int, "a positive integer", False),
}


def _wants(key: Key) -> str:
    return key.wants() if callable(key.wants) else key.wants


class ParameterError(ValueError):
    """A parameter file is unreadable or a key is unknown, missing, mistyped or impossible."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `5e-4` is a number (PyYAML's YAML 1.1 rules would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def read_yaml(path: Path) -> dict:
    """A YAML file that must hold a mapping (an empty file is an empty mapping); ParameterError naming the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError(f"{path}: cannot read parameters: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of key: value, got a {type(data).__name__} ({data!r:.60})")
    return data


def validate(raw: dict, source: str = "<parameters>") -> dict:
    """Fill defaults and check every key; the error names `source` and the key."""
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ParameterError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(SCHEMA)})")
    out = {}
    for name, key in SCHEMA.items():
        if name not in raw:
            if key.default is REQUIRED:
                raise ParameterError(f"{source}: key {name!r} is missing: it must be {_wants(key)}")
            out[name] = key.default
            continue
        value = raw[name]
        if not key.check(value):
            raise ParameterError(f"{source}: key {name!r} must be {_wants(key)}, got {value!r}")
        out[name] = value
    if isinstance(out["snapshot_epochs"], list) and max(out["snapshot_epochs"]) > out["epochs"]:
        late = [e for e in out["snapshot_epochs"] if e > out["epochs"]]
        raise ParameterError(f"{source}: key 'snapshot_epochs' lists epochs after 'epochs' = {out['epochs']}: {late}")
    if out["class_counts"] is not None and out["imbalance_ratio"] is not None:
        raise ParameterError(f"{source}: keys 'class_counts' and 'imbalance_ratio': give one of them, not both")
    if out["held_out_classes"] is not None and (out["class_counts"] is not None or out["imbalance_ratio"] is not None):
        raise ParameterError(f"{source}: keys 'held_out_classes' and 'class_counts' / 'imbalance_ratio': a transfer "
                             "run is balanced, give one of them")
    if out["ood_dataset"] is not None:
        _check_ood(out, source)
    if out["imbalance_ratio"] is not None and out["n_per_class"] is None:
        raise ParameterError(f"{source}: key 'imbalance_ratio' needs 'n_per_class' (the majority classes' count)")
    return out


def _check_ood(out: dict, source: str) -> None:
    """`ood_dataset`: another dataset than the run's, with as many colour channels (nc.data.registry's sizes), in a
    run without held-out classes (one OOD set per run) that does not stream from a prepared store."""
    ood, name = out["ood_dataset"], out["dataset"]
    if ood == name:
        raise ParameterError(f"{source}: key 'ood_dataset': {ood!r} is the run's own dataset; name another one")
    channels = {d: (SIZES.get(d) or (None,) * 4)[3] for d in (name, ood)}
    if None not in channels.values() and channels[name] != channels[ood]:
        raise ParameterError(f"{source}: key 'ood_dataset': {ood!r} has {channels[ood]} colour channel(s), the run's "
                             f"dataset {name!r} has {channels[name]}; the network takes one input shape")
    if out["held_out_classes"] is not None:
        raise ParameterError(f"{source}: keys 'ood_dataset' and 'held_out_classes': give one of them (one OOD set "
                             "per run: NC5 is measured on the held-out classes or on the named dataset)")
    if out["data_source"] == "store":
        raise ParameterError(f"{source}: key 'ood_dataset' needs an in-memory dataset, not data_source 'store'")


def load(path) -> dict:
    """Read a parameter file, merge it over `_defaults.yaml` beside it, validate; adds `name`, `profile` and `file`."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{path}: no such parameter file")
    merged = {}
    defaults = path.parent / "_defaults.yaml"
    if defaults.is_file() and defaults != path:
        merged.update(read_yaml(defaults))
    merged.update(read_yaml(path))
    source = str(path) if not defaults.is_file() else f"{path} (with {defaults.name})"
    params = validate(merged, source)
    params["name"] = path.stem
    params["profile"] = path.parent.name
    params["file"] = str(path)
    return params


def run_seeds(params: dict) -> list[int]:
    """The run seeds of a parameter file (initialisation and batch order), in the file's order."""
    return list(params["seeds"])


def cell_name(params: dict) -> str:
    """The cell's name: the parameter file's stem (`<dataset>-<network>` in the paper's grid profiles, e.g.
    `demo-vgg11-mse` in the follow-ups), or `<dataset>-<network>` for parameters that did not come from a file."""
    return params.get("name") or f"{params['dataset']}-{params['network']}"


def run_label(params: dict, lr: float, seed: int | None = None) -> str:
    """What a person reads for one run (progress bars, the sweep's lines): `<cell> lr=<lr>`, with ` seed=<s>` when
    the cell has several run seeds or this one is not the only seed 0."""
    seeds = run_seeds(params)
    seed = seeds[0] if seed is None else seed
    return f"{cell_name(params)} lr={lr:g}" + (f" seed={seed}" if len(seeds) > 1 or seed else "")


def jobs(params: dict) -> list[tuple[float, int]]:
    """The (lr, run seed) runs of a cell, lr-major in the file's order: one part file and one sweep job each."""
    return [(lr, seed) for lr in params["lrs"] for seed in run_seeds(params)]


def data_arguments(params: dict) -> dict:
    """The keyword arguments of nc.data.load for a cell's data (all but `device`)."""
    return {"name": params["dataset"], "n_per_class": params["n_per_class"],
            "test_n_per_class": params["test_n_per_class"], "image_size": params["image_size"],
            "seed": params["seed"], "root": params["data_root"], "npz_dir": params["npz_dir"],
            "npz_file": params["npz_file"], "source": params["data_source"], "standardize_by": params["standardize"],
            "class_counts": params["class_counts"], "imbalance_ratio": params["imbalance_ratio"],
            "store_dir": params["store_dir"]}


def ood_data_arguments(params: dict) -> dict | None:
    """nc.data.load's keyword arguments for the run's OOD set (`ood_dataset`): the run's own data arguments (image
    size, counts per class, data seed, source and folders, standardisation) with the other dataset's name, its own
    file in the npz folder (not the run's npz_file) and balanced classes; None without `ood_dataset`."""
    if params.get("ood_dataset") is None:
        return None
    return data_arguments(params) | {"name": params["ood_dataset"], "npz_file": None, "class_counts": None,
                                     "imbalance_ratio": None}


def with_seeds(params: dict, n: int | None) -> dict:
    """The parameters with run seeds 0..n-1 (`--seeds n` on the command line); unchanged for None or 0."""
    if not n:
        return params
    if not _pos_int(n):
        raise ParameterError(f"--seeds must be a positive integer, got {n!r}")
    return dict(params, seeds=list(range(n)))


def profile_files(profile_dir) -> list[Path]:
    """The parameter files of a profile directory, sorted, without `_defaults.yaml` and `_executor.yaml`."""
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


def digest(params: dict, leave_out=()) -> str:
    """sha256 over the keys that change results and differ from their defaults (not device, paths or evaluation
    batch sizes, nor the keys in `leave_out`); see the module docstring for why defaults are left out. A cube
    carries digest(params)."""
    keep = {name: params[name] for name, key in SCHEMA.items() if name not in leave_out
            and key.changes_results and (key.default is REQUIRED or params[name] != key.default)}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def run_digest(params: dict) -> str:
    """The digest of one (lr, run seed) run, which a part, its checkpoint and its job record carry: digest without
    `seeds`, since which other seeds the cell has does not change this run. So `--seeds 3` after a one-seed run
    reuses seed 0's parts and trains only seeds 1 and 2."""
    return digest(params, leave_out=("seeds",))


def to_yaml(params: dict) -> str:
    """The full, merged parameters as YAML text (stored in the cube)."""
    return yaml.safe_dump({k: params[k] for k in SCHEMA}, sort_keys=False)
