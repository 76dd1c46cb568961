"""Transfer to held-out classes (Galanti et al. 2022) and NC5 (Ammar et al. 2024) on planted geometries whose values
are known in closed form, the held-out split of the data, and the parameter that opens a transfer run."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from nc import data, measure
from nc.data.loader import TensorSplit
from nc.measure import transfer
from nc.runs import params
from nc.train import snapshot

TINY = {"dataset": "demo", "network": "vgg11", "epochs": 2, "lrs": [0.05]}


class Identity(nn.Module):
    """A 'network' whose features are its input (N, p): the planted points are the features."""

    def __init__(self, p, C):
        super().__init__()
        self.features = nn.Flatten()
        self.classifier = nn.Linear(p, C).double()

    def forward(self, x):
        return self.classifier(self.features(x))


def _split(points, labels):
    return TensorSplit(torch.as_tensor(np.asarray(points), dtype=torch.float64), torch.as_tensor(labels))


def _planted(a=2.0, s=0.25, shots=transfer.SHOTS):
    """p = 6. Trained classes 0, 1 at a e_0, a e_1 (their train points exactly there). Held-out classes k = 0, 1, 2
    with train points a e_{2+k} +- s e_5 (2 * shots of each sign: mean a e_{2+k}, Var_k = s^2) and test points
    exactly at a e_{2+k}."""
    e = np.eye(6)
    trained_x = np.stack([a * e[0]] * 4 + [a * e[1]] * 4)
    trained_y = [0] * 4 + [1] * 4
    held_x, held_y, test_x, test_y = [], [], [], []
    for k in range(3):
        for sign in (1, -1):
            held_x += [a * e[2 + k] + sign * s * e[5]] * shots
            held_y += [k] * shots
        test_x += [a * e[2 + k]] * 7
        test_y += [k] * 7
    held = data.Data(name="held", train=_split(held_x, held_y), test=_split(test_x, test_y), num_classes=3,
                     class_names=["5", "6", "7"], in_channels=1, image_size=1, source="planted",
                     mean=torch.zeros(1), std=torch.ones(1))
    d = data.Data(name="planted", train=_split(trained_x, trained_y), test=_split(trained_x, trained_y),
                  num_classes=2, class_names=["0", "1"], in_channels=1, image_size=1, source="planted",
                  mean=torch.zeros(1), std=torch.ones(1), held_out=held, held_out_classes=(5, 6, 7))
    return d, measure.moments(torch.as_tensor(trained_x), torch.as_tensor(trained_y), 2)


def test_transfer_measures_on_a_planted_geometry_have_their_closed_forms():
    """Held-out CDNV = (s^2 + s^2) / (2 ||a e_i - a e_j||^2) = s^2 / (2 a^2) for every pair; the class centres from
    any shots lie within s of a e_{2+k} and every test point sits at a e_{2+k}, at least a sqrt(2) - s from the
    other centres: few-shot accuracy 1; the OOD mean a (e_2 + e_3 + e_4)/3 is orthogonal to a e_0 and a e_1, and
    about mu_G = a (e_0 + e_1)/2 orthogonal to mu_c - mu_G = +-a (e_0 - e_1)/2: NC5 = 0 both ways."""
    a, s = 2.0, 0.25
    d, moments = _planted(a, s)
    out = snapshot.measure_transfer(Identity(6, 2), d, moments, {"eval_batch_size": 4, "seed": 0})
    assert set(out) == set(transfer.TRANSFER_METRICS)
    assert out["transfer_cdnv"] == pytest.approx(s ** 2 / (2 * a ** 2), rel=1e-12)
    assert out["transfer_ncc_acc"] == 1.0
    assert out["nc5"] == pytest.approx(0.0, abs=1e-15) and out["nc5_centred"] == pytest.approx(0.0, abs=1e-15)


def test_without_held_out_classes_every_transfer_measure_is_nan():
    d, moments = _planted()
    d.held_out = None
    out = snapshot.measure_transfer(Identity(6, 2), d, moments, {"eval_batch_size": 4, "seed": 0})
    assert set(out) == set(transfer.TRANSFER_METRICS) and all(math.isnan(v) for v in out.values())


def test_few_shot_accuracy_is_chance_when_the_classes_coincide():
    """Every feature the same point: every centre ties, ties go to the lowest class, so exactly the test images of
    class 0 are right: 1/K on a balanced test set, in every draw."""
    K, shots, draws = 4, 3, 5
    shot_features = torch.ones(draws, K, shots, 8)
    test = torch.ones(K * 6, 8)
    labels = torch.arange(K).repeat_interleave(6)
    assert transfer.fewshot_accuracy(shot_features, test, labels) == pytest.approx(1 / K, abs=0)


def test_few_shot_accuracy_averages_its_draws():
    """Two draws: in one the centres are the true class points (all right), in the other they are swapped (all
    wrong): the mean over draws is 1/2."""
    e = torch.eye(2, dtype=torch.float64)
    good = e[:, None, :].expand(2, 1, 2)  # (K, shots, p)
    swapped = e.flip(0)[:, None, :]
    shot_features = torch.stack([good, swapped])
    test, labels = torch.cat([e, e]), torch.tensor([0, 1, 0, 1])
    assert transfer.fewshot_accuracy(shot_features, test, labels) == 0.5


def test_nc5_along_a_class_mean_and_at_a_known_angle():
    """Class means e_0, e_1 (p = 3). OOD mean along e_0: |cos| = 1 and 0, NC5 = 1/2; along e_0 + e_2: cos 1/sqrt(2)
    and 0, NC5 = 1/(2 sqrt(2)); orthogonal (e_2): 0. Centred about mu_G = (e_0 + e_1)/2, the OOD mean e_0 lies along
    mu_0 - mu_G = (e_0 - e_1)/2: NC5 centred = 1. A zero vector leaves the cosine undefined: NaN."""
    mu = torch.eye(3, dtype=torch.float64)[:2]
    assert transfer.ood_orthogonality(mu, torch.tensor([1.0, 0, 0])) == pytest.approx(0.5, abs=1e-15)
    assert transfer.ood_orthogonality(mu, torch.tensor([1.0, 0, 1])) == pytest.approx(1 / (2 * math.sqrt(2)),
                                                                                       rel=1e-14)
    assert transfer.ood_orthogonality(mu, torch.tensor([0.0, 0, 5])) == 0.0
    centre = mu.mean(0)
    assert transfer.ood_orthogonality(mu, torch.tensor([1.0, 0, 0]), centre) == pytest.approx(1.0, rel=1e-14)
    assert math.isnan(transfer.ood_orthogonality(mu, torch.zeros(3)))


def test_shot_indices_are_seeded_per_class_and_without_replacement():
    labels = np.repeat(np.arange(3), 10)
    idx = transfer.shot_indices(labels, 3, shots=4, draws=6, seed=1)
    assert idx.shape == (6, 3, 4)
    assert (labels[idx] == np.arange(3)[None, :, None]).all()  # each class's shots are its own rows
    assert all(len(set(row)) == 4 for row in idx.reshape(-1, 4))  # no repeat inside a class's shots
    np.testing.assert_array_equal(idx, transfer.shot_indices(labels, 3, shots=4, draws=6, seed=1))
    assert not np.array_equal(idx, transfer.shot_indices(labels, 3, shots=4, draws=6, seed=2))
    with pytest.raises(ValueError, match=r"class: images\): \{1: 2\}"):
        transfer.shot_indices(np.array([0, 0, 0, 1, 1]), 2, shots=3, draws=1)


def test_hold_out_splits_relabels_and_restandardises_with_the_trained_classes():
    full = data.load("demo", n_per_class=12, test_n_per_class=6, image_size=8, seed=0)
    d = data.hold_out(full, [7, 2, 9])
    kept, held = [0, 1, 3, 4, 5, 6, 8], [2, 7, 9]
    assert d.num_classes == 7 and d.held_out.num_classes == 3 and d.held_out_classes == (2, 7, 9)
    assert d.class_names == [full.class_names[c] for c in kept]
    assert torch.bincount(d.train.y).tolist() == [12] * 7 and torch.bincount(d.held_out.test.y).tolist() == [6] * 3
    x = d.train.x.double()  # standardised with the kept classes' train statistics: mean 0, SD 1 over them
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-5
    raw = full.train.x * full.std + full.mean  # the same pixels, in the same order within each side
    rows = torch.nonzero(torch.isin(full.train.y, torch.tensor(held))).flatten()
    back = d.held_out.train.x * d.std + d.mean
    torch.testing.assert_close(back, raw[rows], atol=1e-5, rtol=0)
    assert d.held_out.train.y.tolist() == [held.index(int(c)) for c in full.train.y[rows]]
    for bad, why in (([3, 3], "distinct"), ([10, 1], "distinct"), ([1], "at least two"),
                     (list(range(9)), "at least two")):
        with pytest.raises(data.DataError, match=why):
            data.hold_out(full, bad)


def test_held_out_classes_is_a_validated_parameter():
    p = params.validate(TINY | {"held_out_classes": [5, 6, 7, 8, 9]}, "t.yaml")
    assert p["held_out_classes"] == [5, 6, 7, 8, 9]
    assert params.validate(TINY, "t.yaml")["held_out_classes"] is None
    assert params.digest(params.validate(TINY, "t.yaml")) != params.digest(p)
    for bad in ([5], [5, 5], [-1, 2], "5-9"):
        with pytest.raises(params.ParameterError, match="'held_out_classes'.*at least two distinct"):
            params.validate(TINY | {"held_out_classes": bad}, "t.yaml")
    with pytest.raises(params.ParameterError, match="'held_out_classes' and 'class_counts'"):
        params.validate(TINY | {"held_out_classes": [5, 6], "imbalance_ratio": 10, "n_per_class": 20}, "t.yaml")
