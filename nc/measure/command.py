"""The logic of `python -m nc.collapse`: a model from a spec, data through nc.data, weights or a series of
checkpoints (nc.measure.checkpoints, read as data), nc.measure.collapse on each, one Dataset (with an `epoch`
dimension for a series), written as NetCDF or CSV and printed as a table.

Model specs (random weights, nothing is ever downloaded):
- `torchvision:NAME` (torchvision.models.get_model(NAME, weights=None, num_classes=C)): takes 3-channel images, so
  1-channel data (MNIST, FashionMNIST, the demo) is repeated to 3 channels;
- `timm:NAME` (timm.create_model(NAME, pretrained=False, num_classes=C, in_chans=the data's channels), and
  img_size= the data's size where the model takes it, as ViTs do);
- `nc:NAME` (this project's nc.models.build: vgg11, resnet18, densenet40, ... at --width, the data's channels
  and size: the networks of the paper's runs, whose checkpoints hold the weights under "model");
- `path/to/module.py:FUNCTION`: FUNCTION(**kw) with whichever of num_classes, in_channels, image_size it accepts.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
from pathlib import Path

import pandas as pd
import torch
import xarray as xr

from nc import data as nc_data
from nc.measure import api, checkpoints, registry


def parser(prog: str = "python -m nc.collapse") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Neural collapse of any network (Papyan, Han & Donoho 2020): every measure of the paper's Figs. 2-7 and "
        "the follow-ups', exact in float64, from one pass over the train split and one over the test split."),
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="torchvision:NAME | timm:NAME | nc:NAME | path/to/module.py:FUNCTION"
                   " (random weights; see below)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the data's)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of an nc: network (default 1)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", default=None, help="checkpoint: a state dict or a full checkpoint (weights inside "
                   "under 'model', 'state_dict', ... or --weights-key); read with torch.load(weights_only=True)")
    w.add_argument("--checkpoints", default=None, metavar="GLOB", help="a series, e.g. 'run/epoch-*.pt': one "
                   "measurement per file, into one result with an `epoch` dimension (the last integer in the name)")
    p.add_argument("--weights-key", default=None, help="the key of the weights inside a checkpoint (dotted: a.b)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a checkpoint that is "
                   "not plain data: it can run code, so only for a file you trust")
    p.add_argument("--data", required=True, help=f"a registered dataset ({', '.join(nc_data.names())}; "
                   f"from NC_NPZ_DIR or torchvision) | npz:PATH | imagefolder:PATH (PATH/train and PATH/val|test)")
    p.add_argument("--split", default="train,test", help="train or train,test (default train,test)")
    p.add_argument("--n-per-class", type=int, default=None, help="train images per class (default: all)")
    p.add_argument("--test-n-per-class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this side (default: as stored; "
                   "an ImageFolder: 32)")
    p.add_argument("--standardize", default="channel", choices=nc_data.STANDARDIZE, help="per channel (default) or "
                   "per pixel, with train statistics, as the training runs do")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--features", default=None, help="module whose output is h (default: the input of the head)")
    p.add_argument("--classifier", default=None, help="the head, an nn.Linear (default: the one with C outputs)")
    p.add_argument("--layers", default=None, help="collapse by depth: blocks, all, or module names (a,b,c)")
    p.add_argument("--pool", default="mean", choices=("mean", "flatten"), help="--layers' features: "
                   "global-average-pooled (default) or flattened")
    p.add_argument("--robustness-images", type=int, default=0, help="DeepFool on that many test images (Fig. 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the random weights")
    p.add_argument("--out", default=None, help="write the result: .nc (NetCDF, every array) or .csv (one row per "
                   "measure)")
    p.add_argument("--plot", default=None, help="with --checkpoints: draw the measures over epochs to this image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_data(args) -> nc_data.Data:
    kw = dict(n_per_class=args.n_per_class, test_n_per_class=args.test_n_per_class, image_size=args.image_size,
              seed=args.seed, standardize_by=args.standardize)
    if args.data.startswith(("npz:", "imagefolder:")):
        return nc_data.load_path(args.data, **kw)
    return nc_data.load(args.data, download=False, **kw)


def _call_with(fn, **available):
    accepted = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return fn(**available)
    return fn(**{k: v for k, v in available.items() if k in accepted})


def build_model(spec: str, num_classes: int, in_channels: int, image_size: int, width: float = 1.0):
    """(model with random weights, the channels it takes) from a spec (module docstring)."""
    kind, _, name = spec.rpartition(":")
    if kind == "torchvision":
        import torchvision
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes), 3
        except ValueError as err:
            raise ValueError(f"--model {spec!r}: {err}") from None
    if kind == "timm":
        import timm
        if not timm.is_model(name):
            raise ValueError(f"--model {spec!r}: timm has no model {name!r} (timm.list_models('*{name}*'))")
        kw = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels)
        try:
            return timm.create_model(name, img_size=image_size, **kw), in_channels
        except TypeError:  # a model without an img_size argument (CNNs)
            return timm.create_model(name, **kw), in_channels
    if kind == "nc":
        from nc import models
        if not models.known(name):
            raise ValueError(f"--model {spec!r}: nc.models has no network {name!r}")
        return models.build(name, num_classes, in_channels, image_size, width), in_channels
    if kind.endswith(".py"):
        path = Path(kind).expanduser()
        if not path.is_file():
            raise ValueError(f"--model {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        fn = getattr(module, name, None)
        if not callable(fn):
            raise ValueError(f"--model {spec!r}: {path} has no function {name!r}")
        return _call_with(fn, num_classes=num_classes, in_channels=in_channels, image_size=image_size), in_channels
    raise ValueError(f"--model {spec!r}: expected torchvision:NAME, timm:NAME, nc:NAME or path/to/module.py:FUNCTION")


class Batches:
    """(x, y) batches of a split, x repeated to `channels` channels where the model takes more than the data has;
    has a length (the progress bar's ETA)."""

    def __init__(self, split, batch_size: int, channels: int):
        self.split, self.batch_size, self.channels = split, batch_size, channels

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self):
        for x, y in self.split.batches(self.batch_size):
            if x.shape[1] != self.channels:
                x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x
            yield x, y


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        "cpu" if name == "auto" else name)


def run(args) -> xr.Dataset:
    """The measurement the arguments ask for (one snapshot, or a series along `epoch`)."""
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if "train" not in splits or not set(splits) <= {"train", "test"}:
        raise ValueError(f"--split {args.split!r}: expected train or train,test")
    device = _device(args.device)
    data = load_data(args)
    C = args.num_classes or data.num_classes
    torch.manual_seed(args.seed)
    model, channels = build_model(args.model, C, data.in_channels, data.image_size, args.width)
    model.to(device)
    train = Batches(data.train, args.batch_size, channels)
    test = Batches(data.test, args.batch_size, channels) if "test" in splits else None
    layers = args.layers if args.layers in (None, "blocks", "all") else args.layers.split(",")
    kw = dict(num_classes=C, features=args.features, classifier=args.classifier, layers=layers, pool=args.pool,
              robustness_images=args.robustness_images, device=device, progress=not args.no_progress)
    files = checkpoints.series(args.checkpoints) if args.checkpoints else [(None, args.weights)]
    results = []
    for epoch, path in files:
        if path is not None:
            checkpoints.load_into(model, path, args.weights_key, args.trust_checkpoint)
        ds = api.collapse(model, train, test, **kw)
        if epoch is not None:
            ds = ds.expand_dims(epoch=[epoch])
        results.append(ds)
    ds = xr.concat(results, dim="epoch", combine_attrs="override") if args.checkpoints else results[0]
    if "epoch" in ds.dims:
        ds["epoch"].attrs.update(long_name="epoch", units="1", definition="the last integer in the checkpoint's "
                                 "file name")
    ds.attrs.update(model=args.model, data=args.data, data_source=data.source, n_train=len(data.train),
                    weights=str(args.checkpoints or args.weights or "random (untrained)"), splits=",".join(splits))
    return ds


def table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per measure (and the accuracies): its value (one column per epoch for a series), long name, units."""
    names = [k for k in (*registry.MEASURES, *registry.ACCURACY) if k in ds]
    rows = {}
    for k in names:
        values = ds[k].values.reshape(-1)
        cols = ([f"epoch {int(e)}" for e in ds["epoch"].values] if "epoch" in ds.dims else ["value"])
        rows[k] = {**dict(zip(cols, values)), "long_name": ds[k].attrs["long_name"], "units": ds[k].attrs["units"]}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "measure"
    return out


def write(ds: xr.Dataset, out) -> Path:
    """`.nc`: the whole Dataset as NetCDF; `.csv`: the table (one row per measure)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table(ds).to_csv(out)
    elif out.suffix in (".nc", ".nc4", ".netcdf"):
        ds.to_netcdf(out, engine="netcdf4")
    else:
        raise ValueError(f"--out {str(out)!r}: expected a .nc or .csv file")
    return out


def show(ds: xr.Dataset) -> str:
    """The table as text, values to 4 significant digits."""
    t = table(ds)
    head = (f"{ds.attrs.get('model')} on {ds.attrs.get('data')} ({ds.attrs['n_train']} train, "
            f"{ds.attrs['n_test']} test images), weights: {ds.attrs.get('weights')}; features: "
            f"{ds.attrs['features']}, p = {ds.attrs['feature_dim']}, C = {ds.attrs['num_classes']}")
    return head + "\n" + t.drop(columns=["units"]).to_string(float_format=lambda v: f"{v:.4g}")
