"""Deep neural collapse at the linear head (the book's Part II), float64.

Súkeník, Mondelli & Lampert, "Deep neural collapse is provably optimal for the deep unconstrained features model"
(NeurIPS 2023), extend NC2 and NC3 from the last layer to every one of the last L LINEAR layers of a network
(their deep unconstrained features model, DUFM: H_{l+1} = ReLU(W_l H_l), l = 1..L): DNC2, the class means M_l of
each layer's input form a fixed frame (an orthogonal frame for the non-negative features after a ReLU, whose
centred means are then a simplex ETF), and DNC3, the rows of each W_l are aligned with the class means of its
input (W_l proportional to M_l^T on their span). The registry's VGG networks (nc.models.vgg) end with exactly such
linear layers: the head's fc6 and fc7 (Linear-ReLU-BatchNorm1d each) and the classifier. Here, for each of the
three Linear layers l in HEAD_LAYERS, h_l is its INPUT (a forward pre-hook; fc6's is the pooled and flattened
conv output, fc7's the output of fc6's BatchNorm1d, the classifier's the features h), over the train set, eval
mode; mu_c,l its train class means, mu_G,l = Ave_c mu_c,l, M_l = [mu_c,l - mu_G,l] (p_l x C), W_l the layer's
weight (d_l x p_l, no bias):

- dnc2_<layer> = || G_l/||G_l||_F - P/||P||_F ||_F, G_l = M_l^T M_l (C x C), P = I_C - 1 1^T / C: the simplex-ETF
  Gram error of the CENTRED class means (Zhu et al. 2021's NC2 form, our etf_error_means at the classifier's
  input). 0 on a simplex ETF and on the source's orthogonal frame of equal norms (whose centred Gram is a P, a > 0),
  in [0, 2]. Centred, not the source's uncentred orthogonal frame: in our head each Linear's input follows a
  BatchNorm1d (or the conv body's last BN-ReLU and a pooling), which shifts every coordinate, so the uncentred
  means of a network that collapsed are an orthogonal frame only up to a common offset; the centred Gram is
  invariant to it.
- dnc3_<layer> = 1 - ||W_l U_l||_F^2 / ||W_l||_F^2, U_l (p_l x (C-1)) an orthonormal basis of the span of M_l (its
  rank C-1 truncated SVD, nc.measure.moments.mean_span_basis): the share of the layer's weight energy OUTSIDE the
  span of its input's centred class means. 0 when every row of W_l lies in that span (the source's W_l = sigma_l
  M_l^T, and Papyan's NC3 at the classifier, W proportional to M^T), 1 when every row is orthogonal to it, (C-1)/p_l
  below 1 in expectation for isotropic random rows. A subspace statement, not W_l M_l against an ideal matrix:
  fc6 and fc7 have d_l > C rows, and the source's DNC3 fixes their row space, not which row is which class.
  NaN where p_l < C-1 (the span cannot have rank C-1).

Cost: the class means of fc6's and fc7's inputs (8 C p_l bytes each, Chan-merged per batch, the batch's float64
copy 8 B p_l), taken in the snapshot's own train pass (no extra forward); the span's thin SVD is O(p_l C^2); no
p_l x p_l matrix. Networks without such a head (ResNet, DenseNet) get NaN.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nc.measure import followups
from nc.measure.depth import ClassMeansTrace, Hooks
from nc.measure.moments import mean_span_basis

HEAD_LAYERS = ("fc6", "fc7", "classifier")  # the Linear layers whose inputs are measured, input side first
HEAD_METRICS = tuple(f"dnc{k}_{layer}" for k in (2, 3) for layer in HEAD_LAYERS)

_INPUT = {"fc6": "the input of fc6's Linear (the conv body's output, pooled and flattened)",
          "fc7": "the input of fc7's Linear (fc6's Linear-ReLU-BatchNorm1d output)",
          "classifier": "the input of the classifier (the features h)"}
_COMMON = ("; mu_c train class means of that input (eval mode), M = [mu_c - mu_G], mu_G = Ave_c mu_c; Súkeník, "
           "Mondelli & Lampert (NeurIPS 2023), deep neural collapse at the last linear layers; NaN for networks "
           "without a linear head (fc6, fc7) and off snapshot epochs")
DEFINITIONS = {
    **{f"dnc2_{layer}": f"||G/||G||_F - P/||P||_F||_F, G = M^T M of {_INPUT[layer]}, P = I - 11^T/C: the simplex-"
                        f"ETF Gram error of the centred class means (0 also on the source's orthogonal frame once "
                        f"centred), in [0, 2]" + _COMMON for layer in HEAD_LAYERS},
    **{f"dnc3_{layer}": f"1 - ||W U||_F^2/||W||_F^2, W the {layer} Linear's weight (no bias), U an orthonormal basis "
                        f"of the span of the centred class means M of {_INPUT[layer]} (rank C-1): the share of W's "
                        f"energy outside the class-mean span, 0 = every row in it, in [0, 1]; NaN where the input is "
                        f"narrower than C-1" + _COMMON for layer in HEAD_LAYERS},
}
LONG_NAMES = {**{f"dnc2_{layer}": f"DNC2 at {layer}'s input" for layer in HEAD_LAYERS},
              **{f"dnc3_{layer}": f"DNC3 of {layer}'s weight" for layer in HEAD_LAYERS}}


def head_linears(model) -> list[tuple[str, nn.Linear]]:
    """[(layer, nn.Linear)] for HEAD_LAYERS: the first module of the blocks fc6 and fc7 (model.blocks()) when it is an
    nn.Linear, then model.classifier; [] for a network without that head."""
    blocks = dict(model.blocks()) if hasattr(model, "blocks") else {}
    out = []
    for name in HEAD_LAYERS[:-1]:
        module = blocks.get(name)
        first = module[0] if isinstance(module, nn.Sequential) and len(module) else module
        if not isinstance(first, nn.Linear):
            return []
        out.append((name, first))
    classifier = getattr(model, "classifier", None)
    return out + [("classifier", classifier)] if isinstance(classifier, nn.Linear) else []


def etf_gram_error(class_means: torch.Tensor) -> float:
    """||G/||G||_F - P/||P||_F||_F with G = M^T M, M = [mu_c - Ave_c mu_c] (class_means: C x p), P = I - 11^T/C
    (nc.measure.followups.etf_gram_error of the centred means: only the C x C Gram is formed). NaN where the means
    all coincide."""
    mu = class_means.to(torch.float64)
    return followups.etf_gram_error(mu - mu.mean(dim=0))


def weight_span_misalignment(weight: torch.Tensor, class_means: torch.Tensor) -> float:
    """1 - ||W U||_F^2/||W||_F^2 with U (p x (C-1)) the orthonormal left singular vectors of M = [mu_c - Ave_c mu_c]^T
    at rank C-1 (weight: d x p, class_means: C x p). NaN where p < C-1 or W = 0."""
    W = weight.to(torch.float64)
    mu = class_means.to(device=W.device, dtype=torch.float64)
    if mu.shape[1] < mu.shape[0] - 1:
        return math.nan
    U, _, _ = mean_span_basis((mu - mu.mean(dim=0)).T)
    total = W.pow(2).sum()
    if not total > 0:
        return math.nan
    return (1.0 - (W @ U).pow(2).sum() / total).clamp(0.0, 1.0).item()


def layer_metrics(layer: str, weight, class_means) -> dict:
    return {f"dnc2_{layer}": etf_gram_error(class_means),
            f"dnc3_{layer}": weight_span_misalignment(weight, class_means)}


def nan_metrics() -> dict:
    return dict.fromkeys(HEAD_METRICS, math.nan)


class HeadTap(Hooks):
    """Context manager: forward pre-hooks on the head's fc6 and fc7 Linear layers (removed on exit), and, per layer,
    a ClassMeansTrace of its input, fed by `update(y)` after each forward of the model (the snapshot's train pass
    calls it from its per-batch callback). Without a head (head_linears(model) == []) it hooks nothing."""

    def __init__(self, model, num_classes: int, device):
        self.layers = head_linears(model)
        self.captured, self.handles = {}, []
        self.accs = {name: ClassMeansTrace(num_classes, linear.in_features, device) for name, linear in self.layers
                     if name != "classifier"}

    def _hooked(self):
        return [(name, linear) for name, linear in self.layers if name in self.accs]

    def _hook(self, name, linear):
        return linear.register_forward_pre_hook(lambda mod, args: self.captured.__setitem__(name, args[0]))

    def update(self, y) -> None:
        for name, acc in self.accs.items():
            acc.update(self.captured.pop(name).reshape(len(y), -1), y)

    def metrics(self, classifier_means, merge=lambda acc: acc) -> dict:
        """dnc2_/dnc3_ of every head layer (NaN without a head): fc6 and fc7 from their accumulators (`merge`: the DDP
        merge of an accumulator, nc.measure.distributed.merge_accumulator), the classifier from `classifier_means`
        (the snapshot's class means of h)."""
        if not self.layers:
            return nan_metrics()
        out = {}
        for name, linear in self.layers:
            means = classifier_means if name == "classifier" else merge(self.accs[name]).finalize().class_means
            out.update(layer_metrics(name, linear.weight.detach(), means))
        return out
