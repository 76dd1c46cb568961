"""A user's network as a source of features: its head (the classifier), its penultimate features (a hook), and its
batches (tuples or dicts), each checked with one clear error naming the argument and the value.

- The head: an `nn.Linear` whose output width is the number of classes (the width of the model's output). Exactly
  one such layer, or the one named by `classifier=` (a module or its dotted name); several or none is an error that
  lists them and says which argument to pass.
- The features: by default the input of the head (a forward pre-hook), as the paper's Section 2I takes h; or the
  output of the module named by `features=`, flattened to (B, p). Features keep the model's dtype here (bf16, fp16,
  float32); the accumulators upcast them to float64 exactly.
- A batch: `(x, y)` (a tuple or list, further items ignored) or a mapping with an input key and a label key (Hugging
  Face's `{"pixel_values": ..., "labels": ...}`; the keys can be named). Labels: any integer dtype, in [0, C).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
import torch.nn as nn

INPUT_KEYS = ("pixel_values", "input_values", "input_ids", "inputs", "input", "images", "image", "x")
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def _named(model: nn.Module, what, arg: str) -> tuple[str, nn.Module]:
    """(name, module) for a module of `model` given as a module or a dotted name; an unknown name lists close ones."""
    if isinstance(what, nn.Module):
        for name, module in model.named_modules():
            if module is what:
                return name, module
        raise ValueError(f"{arg}= is a {type(what).__name__} that is not a submodule of the model")
    names = [name for name, _ in model.named_modules() if name]
    if what not in names:
        close = difflib.get_close_matches(str(what), names, n=5, cutoff=0.4)
        hint = f"close names: {', '.join(close)}" if close else f"its modules include: {', '.join(names[:12])}"
        raise ValueError(f"{arg}={what!r}: the model has no module of that name; {hint}")
    return what, model.get_submodule(what)


def output_width(output) -> int:
    """The number of logits of a model's output: a tensor (B, C), an object with `.logits`, a mapping with
    "logits", or a tuple whose first item is one of these."""
    if isinstance(output, torch.Tensor):
        return int(output.shape[-1])
    if isinstance(output, Mapping) and "logits" in output:
        return output_width(output["logits"])
    if hasattr(output, "logits"):
        return output_width(output.logits)
    if isinstance(output, (tuple, list)) and output:
        return output_width(output[0])
    raise TypeError(f"cannot read the number of classes from a model output of type {type(output).__name__}: "
                    f"pass num_classes=")


def find_head(model: nn.Module, num_classes: int, classifier=None, features=None) -> tuple[str, nn.Linear] | None:
    """The classifier: the module `classifier` names, else the one `nn.Linear` with `num_classes` outputs.

    None when there is no candidate but `features=` is named (the classifier measures are then NaN)."""
    if classifier is not None:
        name, head = _named(model, classifier, "classifier")
        if not isinstance(head, nn.Linear):
            raise ValueError(f"classifier={name!r} is a {type(head).__name__}, not an nn.Linear")
        return name, head
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears and features is None:
        raise ValueError("the model has no nn.Linear layer to take the features from: pass features= (a module "
                         "or its dotted name, whose output is the feature vector)")
    heads = [(name, m) for name, m in linears if m.out_features == num_classes]
    if len(heads) == 1:
        return heads[0]
    listed = ", ".join(f"{name} ({m.in_features}->{m.out_features})" for name, m in linears) or "none"
    if not heads:
        if features is not None:
            return None
        raise ValueError(f"no nn.Linear of the model has {num_classes} outputs (the number of classes); its "
                         f"nn.Linear layers: {listed}; pass classifier= (and features=, or num_classes=)")
    names = ", ".join(name for name, _ in heads)
    raise ValueError(f"the model has {len(heads)} candidate heads with {num_classes} outputs: {names}; pass "
                     f"classifier= with one of them")


class FeatureTap:
    """Context manager: a hook that keeps the last forward's features (B, p) in `self.h`, removed on exit.

    `features` None: the head's input (a forward pre-hook on `head`); else the named module's output, flattened."""

    def __init__(self, model: nn.Module, head: nn.Module | None, features=None):
        if features is None:
            self.name, self.module, self.pre = None, head, True
        else:
            (self.name, self.module), self.pre = _named(model, features, "features"), False
        self.h, self.handle = None, None

    def _keep(self, value) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"features={self.name!r} returned a {type(value).__name__}, not a tensor")
        self.h = value.detach().reshape(len(value), -1)

    def __enter__(self):
        if self.pre:
            self.handle = self.module.register_forward_pre_hook(lambda mod, args: self._keep(args[0]))
        else:
            self.handle = self.module.register_forward_hook(lambda mod, args, out: self._keep(out))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def take(self) -> torch.Tensor:
        h, self.h = self.h, None
        if h is None:
            where = "the head's input" if self.pre else f"features={self.name!r}"
            raise RuntimeError(f"the forward pass did not run {where}")
        return h


def split_batch(batch, index: int, input_key=None, label_key=None):
    """(x, y) of one batch: a tuple/list (x, y, ...) or a mapping (keys named, or the usual ones)."""
    if isinstance(batch, Mapping):
        keys = list(batch)
        ik = input_key or next((k for k in INPUT_KEYS if k in batch), None)
        lk = label_key or next((k for k in LABEL_KEYS if k in batch), None)
        for arg, key, known in (("input_key", ik, INPUT_KEYS), ("label_key", lk, LABEL_KEYS)):
            if key is None or key not in batch:
                raise ValueError(f"batch {index} is a mapping with keys {keys}: none is {arg}="
                                 f"{key if key is not None else ' / '.join(known)}; pass {arg}=")
        return batch[ik], batch[lk]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"batch {index} is a {type(batch).__name__}: expected (x, y) or a mapping of inputs and labels")


def check_labels(y, index: int, num_classes: int, where: str) -> torch.Tensor:
    """Labels as int64: an integer tensor in [0, num_classes), else an error naming the batch and the value."""
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{where}: batch {index} has labels of dtype {y.dtype}; labels must be integer class "
                        f"indices (e.g. y.long())")
    y = y.reshape(-1).to(torch.int64)
    if len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{where}: batch {index} has label {bad}, outside num_classes={num_classes} "
                             f"(labels 0..{num_classes - 1}); pass a num_classes above the largest label")
    return y
