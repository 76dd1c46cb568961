"""Prepare ImageNet at the paper's resolution as a uint8 store that training streams from (read it with nc.data.store).

`python -m nc.prepare imagenet --from ROOT` reads the ImageFolder ROOT/{train,val}/<wnid>/*.JPEG, keeps
--n-per-class images of every train class (600 in the paper, Section 2E), drawn exactly as nc.data.balanced_indices
draws them (seed --seed), and all of val (or --test-n-per-class of each class, drawn the same way), and decodes
each image as RGB through Resize(round(size * 256 / 224)) + CenterCrop(size): Resize(256) + CenterCrop(224) at 224
px, the same deterministic transform for both splits. It writes, under --out (default
$NC_DATA_ROOT/prepared/imagenet-<size>px-<n>pc-seed<seed>, NC_DATA_ROOT defaulting to ~/.cache/nc-data):

  train_images.u8, test_images.u8    raw uint8 pixels, N x 3 x size x size in C order (numpy.memmap)
  train_labels.npy, test_labels.npy  int64 class ids into manifest["class_names"] (the sorted wnids)
  manifest.json                      format version, arguments, class names; per split the source files (relative
                                     to ROOT, in store order), the sha256 of their bytes, shape and dtype; the
                                     per-channel mean and population SD (ddof 0) of the train pixels in [0, 1]

At 224 px x 600 per class x 1000 classes the train store is 90 GB. A killed prepare resumes: progress.json
(written atomically after the memmaps are flushed) says how many rows of each split are final; later rows are
decoded again, so the result is byte-identical to an uninterrupted run. manifest.json, written last, marks a
finished store, which a rerun leaves alone. Every json file is written atomically (temporary file + os.replace).
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

from nc import files, paths
from nc.data.sampling import balanced_indices
from nc.data.store import FORMAT_VERSION, channel_stats, default_workers

FOLDERS = {"train": "train", "test": "val"}  # store split -> folder under ROOT
DECODE_BATCH = 64  # images per DataLoader batch (at most --checkpoint-every)
PAUSE_ENV = "NC_PREPARE_PAUSE_AFTER"  # test hook: sleep for ever once this many images are final (then kill us)


class PrepareError(RuntimeError):
    """A problem with the input or the target that the user can fix; the message names the path and the fix."""


def default_out(size, n_per_class, seed, test_n_per_class=None):
    base = paths.data_root()
    test = "" if test_n_per_class is None else f"-test{test_n_per_class}pc"
    return os.path.join(base, "prepared", f"imagenet-{size}px-{n_per_class}pc-seed{seed}{test}")


def _write_json(path, obj):
    files.write_json(path, obj, fsync=True)


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _save_npy(path, array):
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _gib(n):
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"


# ----------------------------------------------------------------------------- what to write

def _scan(root):
    """(class names, {split: (absolute paths, labels)}) of the ImageFolder ROOT/train and ROOT/val."""
    import torchvision.datasets as tvd
    layout = "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (val sorted into the same class folders)"
    if not os.path.isdir(root):
        raise PrepareError(f"no such folder: {root}. Pass --from the ImageNet ImageFolder root, laid out as {layout}")
    found = {}
    for split, folder in FOLDERS.items():
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            raise PrepareError(f"no folder {path}: --from must be an ImageFolder root laid out as {layout}")
        try:  # the loader is never called: ImageFolder only lists the class folders and their images here
            ds = tvd.ImageFolder(path, loader=str)
        except FileNotFoundError as err:  # no class folders, or a class folder without images
            raise PrepareError(f"{path}: no images found ({err}). Lay it out as {layout}") from err
        found[split] = ds
    train, val = found["train"], found["test"]
    if train.classes != val.classes:
        a, b = set(train.classes), set(val.classes)
        only_train, only_val = sorted(a - b), sorted(b - a)
        raise PrepareError(f"the class folders of {train.root} and {val.root} differ ({len(train.classes)} vs "
                           f"{len(val.classes)}; only in train: {only_train[:5]}, only in val: {only_val[:5]}). "
                           f"Sort val into the same class folders as train (e.g. with ILSVRC's valprep.sh)")
    return train.classes, {s: ([p for p, _ in ds.samples], np.asarray(ds.targets, dtype=np.int64))
                           for s, ds in found.items()}


def _plan(root, n_per_class, test_n_per_class, size, seed):
    """Everything that determines the store's bytes, as plain data: arguments, versions, classes, files, labels."""
    import PIL
    import torchvision
    classes, listed = _scan(root)
    splits = {}
    for split, n in (("train", n_per_class), ("test", test_n_per_class)):
        paths, labels = listed[split]
        if n is not None:
            counts = np.bincount(labels, minlength=len(classes))
            short = np.flatnonzero(counts < n)
            if short.size:
                option = "--n-per-class" if split == "train" else "--test-n-per-class"
                c = short[0]
                raise PrepareError(f"{os.path.join(root, FOLDERS[split], classes[c])} has {counts[c]} images, fewer "
                                   f"than {option} {n} ({short.size} classes are short). Lower {option} or add images")
        idx = balanced_indices(labels, n, len(classes), seed)
        idx = np.arange(len(labels)) if idx is None else idx
        files = [os.path.relpath(p, root) for p in np.asarray(paths, dtype=object)[idx]]
        splits[split] = {"files": files, "labels": labels[idx], "shape": [len(idx), 3, size, size]}
    return {"format_version": FORMAT_VERSION, "dataset": "imagenet",
            "arguments": {"root": root, "n_per_class": n_per_class, "test_n_per_class": test_n_per_class,
                          "size": size, "seed": seed},
            "transform": f"RGB, Resize({round(size * 256 / 224)}, bilinear, antialias) + CenterCrop({size})",
            "versions": {"torchvision": torchvision.__version__, "pillow": PIL.__version__},
            "class_names": list(classes), "splits": splits}


def _plan_sha256(plan):
    keyed = {**plan, "splits": {s: {"files": v["files"], "shape": v["shape"]} for s, v in plan["splits"].items()}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def _command(plan, out):
    a = plan["arguments"]
    test = "" if a["test_n_per_class"] is None else f" --test-n-per-class {a['test_n_per_class']}"
    return (f"python -m nc.prepare imagenet --from {a['root']} --out {out} --n-per-class {a['n_per_class']}{test} "
            f"--size {a['size']} --seed {a['seed']}")


# ----------------------------------------------------------------------------- decoding

class _Decode(torch.utils.data.Dataset):
    """Image i: (uint8 3 x size x size, sha256 of the file's bytes as 32 uint8, error text or "")."""

    def __init__(self, paths, size):
        import torchvision.transforms as T
        self.paths, self.size = paths, size
        self.transform = T.Compose([T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR,
                                             antialias=True), T.CenterCrop(size), T.PILToTensor()])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        try:
            with open(self.paths[i], "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as image:
                x = self.transform(image.convert("RGB"))
            digest = torch.frombuffer(bytearray(hashlib.sha256(data).digest()), dtype=torch.uint8)
            return x, digest, ""
        except Exception as err:  # reported by the main process with the file's path
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), torch.zeros(32, dtype=torch.uint8), \
                f"{type(err).__name__}: {err}"


def _decode_split(plan, split, out, done, progress, workers, checkpoint_every):
    from tqdm import tqdm
    root, info = plan["arguments"]["root"], plan["splits"][split]
    n, shape = info["shape"][0], tuple(info["shape"])
    images_file, sha_file = os.path.join(out, f"{split}_images.u8"), os.path.join(out, f"{split}_sha256.u8")
    start = done[split] if os.path.isfile(images_file) and os.path.getsize(images_file) == np.prod(shape) \
        and os.path.isfile(sha_file) and os.path.getsize(sha_file) == 32 * n else 0
    if start == 0 and done[split]:  # the files are gone or of the wrong size: nothing of this split is final
        done[split] = 0
        _write_json(os.path.join(out, "progress.json"), {**progress, "done": done})
    mode = "r+" if start else "w+"
    images = np.memmap(images_file, dtype=np.uint8, mode=mode, shape=shape)
    shas = np.memmap(sha_file, dtype=np.uint8, mode=mode, shape=(n, 32))
    dataset = _Decode([os.path.join(root, f) for f in info["files"]], shape[-1])
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(DECODE_BATCH, checkpoint_every),
                                         sampler=range(start, n), num_workers=workers)
    pos = saved = start
    with tqdm(total=n, initial=start, desc=f"decode {split}", unit="img", dynamic_ncols=True) as bar:
        for x, digest, errors in loader:
            bad = next((k for k, e in enumerate(errors) if e), None)
            if bad is not None:
                raise PrepareError(f"cannot decode {os.path.join(root, info['files'][pos + bad])} "
                                   f"({errors[bad]}). Replace it with a readable copy (e.g. extract it again from "
                                   f"the ILSVRC archive) and rerun the same command: it resumes where it stopped")
            images[pos:pos + len(x)], shas[pos:pos + len(x)] = x.numpy(), digest.numpy()
            pos += len(x)
            bar.update(len(x))
            if pos - saved >= checkpoint_every or pos == n:
                images.flush()
                shas.flush()
                done[split] = saved = pos
                _write_json(os.path.join(out, "progress.json"), {**progress, "done": done})
                _maybe_pause(sum(done.values()))


def _maybe_pause(n_final):
    pause = os.environ.get(PAUSE_ENV)
    if pause and n_final >= int(pause):
        print(f"{PAUSE_ENV}={pause}: {n_final} images are final; sleeping until killed (a test hook)", flush=True)
        while True:
            time.sleep(60)


# ----------------------------------------------------------------------------- the whole prepare

def prepare(root, out=None, n_per_class=600, test_n_per_class=None, size=224, seed=0, workers=None,
            checkpoint_every=4096):
    """Write (or finish, or leave alone if finished) the prepared store; returns its folder. PrepareError for
    problems the user can fix: a missing folder, no images, a short class, an unreadable image, too little disk."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    out = os.path.abspath(os.path.expanduser(str(out or default_out(size, n_per_class, seed, test_n_per_class))))
    plan = _plan(root, n_per_class, test_n_per_class, size, seed)
    sha = _plan_sha256(plan)
    manifest_file, progress_file = os.path.join(out, "manifest.json"), os.path.join(out, "progress.json")
    finished = _read_json(manifest_file)
    if finished is not None:
        if finished.get("plan_sha256") != sha:
            raise PrepareError(f"{out} already holds a store prepared from other arguments or source files "
                               f"({finished.get('arguments')}); pass another --out or delete {out}")
        print(f"{out} is already prepared (manifest.json matches these arguments); nothing to do")
        return out
    progress = _read_json(progress_file)
    if progress is not None and progress.get("plan_sha256") != sha:
        raise PrepareError(f"{out} holds an unfinished prepare started with other arguments or source files "
                           f"({progress.get('arguments')}); rerun that command to finish it, pass another --out, "
                           f"or delete {out}")
    done = dict(progress["done"]) if progress else dict.fromkeys(FOLDERS, 0)

    per_split = {s: int(np.prod(v["shape"])) + 40 * v["shape"][0] for s, v in plan["splits"].items()}
    need = sum(int(np.prod(v["shape"][1:]) + 40) * (v["shape"][0] - done[s]) for s, v in plan["splits"].items())
    target = out
    while not os.path.exists(target):
        target = os.path.dirname(target)
    free = shutil.disk_usage(target).free
    print(f"prepared store {out}\n" + "".join(f"  {s}: {v['shape'][0]:,} images x {v['shape'][1:]} uint8 + labels = "
                                              f"{_gib(per_split[s])}\n" for s, v in plan["splits"].items())
          + f"  total {_gib(sum(per_split.values()))}; still to write {_gib(need)}; free on {target}: {_gib(free)}")
    if free < need:
        raise PrepareError(f"not enough disk space on {target} for {out}: {_gib(need)} still to write, {_gib(free)} "
                           f"free. Free some space or pass --out on a larger disk")

    os.makedirs(out, exist_ok=True)
    progress = {"plan_sha256": sha, "arguments": plan["arguments"], "command": _command(plan, out),
                "total": {s: v["shape"][0] for s, v in plan["splits"].items()}, "done": done}
    _write_json(progress_file, progress)
    for split, info in plan["splits"].items():
        _save_npy(os.path.join(out, f"{split}_labels.npy"), info["labels"])
    total = sum(v["shape"][0] for v in plan["splits"].values())
    workers = (0 if total < 1024 else default_workers()) if workers is None else workers
    for split in FOLDERS:
        if done[split] < plan["splits"][split]["shape"][0]:
            _decode_split(plan, split, out, done, progress, workers, checkpoint_every)

    print("per-channel statistics of the train pixels ...", flush=True)
    shape = tuple(plan["splits"]["train"]["shape"])
    mean, std = channel_stats(np.memmap(os.path.join(out, "train_images.u8"), dtype=np.uint8, mode="r", shape=shape))
    manifest = {k: v for k, v in plan.items() if k != "splits"}
    manifest.update(plan_sha256=sha, mean=mean.tolist(), std=std.tolist(), splits={})
    for split, info in plan["splits"].items():
        n = info["shape"][0]
        hexes = np.fromfile(os.path.join(out, f"{split}_sha256.u8"), dtype=np.uint8).tobytes().hex()
        manifest["splits"][split] = {
            "source_folder": FOLDERS[split], "images_file": f"{split}_images.u8", "labels_file": f"{split}_labels.npy",
            "shape": info["shape"], "dtype": "uint8", "layout": "NCHW",
            "per_class": np.bincount(info["labels"], minlength=len(plan["class_names"])).tolist(),
            "files": info["files"], "sha256": [hexes[64 * i:64 * (i + 1)] for i in range(n)]}
    _write_json(manifest_file, manifest)
    for leftover in ("progress.json", "train_sha256.u8", "test_sha256.u8"):
        os.remove(os.path.join(out, leftover))
    print(f"done: {out} (mean {np.round(mean, 4).tolist()}, SD {np.round(std, 4).tolist()})")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nc.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["imagenet"])
    parser.add_argument("--from", dest="root", required=True, help="ImageFolder root with train/ and val/")
    parser.add_argument("--out", default=None, help="store folder (default: $NC_DATA_ROOT/prepared/imagenet-...)")
    parser.add_argument("--n-per-class", type=int, default=600, help="train images per class (paper: 600)")
    parser.add_argument("--test-n-per-class", type=int, default=None, help="val images per class (default: all)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels after the center crop")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balanced train subset")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default min(8, cores))")
    parser.add_argument("--checkpoint-every", type=int, default=4096, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        prepare(args.root, args.out, args.n_per_class, args.test_n_per_class, args.size, args.seed, args.workers,
                args.checkpoint_every)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
