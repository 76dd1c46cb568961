"""nc.measure.collapse on any network: on torchvision's resnet18 / vgg11_bn and a timm ViT with random weights it
finds the head and equals nc.measure on the features extracted by hand (to 1e-12); planted geometries through an
identity model give the closed forms of tests/test_measure.py; dict batches equal tuple batches; bf16 features
equal the float64 computation on the same upcast features; bad input is one clear error naming the argument and
the value; statistics saved in shards and merged equal one pass."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from test_measure import nc1_closed_form, planted_features, simplex_etf

from nc import measure
from nc.measure import followups

C = 5


def batches(x, y, size=8):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def images(n, size=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.arange(n) % C


def reference(h, y, W, b, th, ty):
    """nc.measure's own numbers on features extracted by hand: the paper's and the follow-ups' measures."""
    out = measure.collapse_metrics(h, y, W, b, th, C)
    m = measure.moments(h, y, C)
    acc = followups.TestAccumulator(m, C, h.shape[1])
    acc.update(th, ty)
    out.update(followups.followup_metrics(m, W, acc.finalize()))
    out["within_trace"] = m.within_trace
    return out, m


def assert_matches(ds, expected, m, W):
    for key, value in expected.items():
        assert ds[key].item() == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), key  # NaN: needs a 2nd pass
    np.testing.assert_allclose(ds["class_means"].values, m.class_means.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ds["classifier_weight"].values, W.double().numpy())
    for key, var in ds.data_vars.items():
        assert {"long_name", "units", "definition"} <= set(var.attrs), key


def resnet18_features(model, x):
    body = nn.Sequential(*list(model.children())[:-1])
    return torch.flatten(body(x), 1)


def vgg_features(model, x):
    return model.classifier[:-1](torch.flatten(model.avgpool(model.features(x)), 1))


@pytest.mark.parametrize("build,extract,size", [
    (lambda: torchvision.models.resnet18(num_classes=C), resnet18_features, 16),
    (lambda: torchvision.models.vgg11_bn(num_classes=C), vgg_features, 32),  # five 2x2 pools
])
def test_torchvision_models_equal_features_by_hand(build, extract, size):
    """float32 models: the hand extraction runs the same float32 operations on the same batches."""
    torch.manual_seed(0)
    model = build().eval()
    x, y = images(30, size, dtype=torch.float32)
    tx, ty = images(15, size, seed=1, dtype=torch.float32)
    ds = measure.collapse(model, batches(x, y), batches(tx, ty), progress=False)
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    with torch.no_grad():
        h = torch.cat([extract(model, xb) for xb, _ in batches(x, y)])
        th = torch.cat([extract(model, xb) for xb, _ in batches(tx, ty)])
        logits = torch.cat([model(xb) for xb, _ in batches(tx, ty)])
    expected, m = reference(h, y, head.weight.detach(), head.bias.detach(), th, ty)
    assert_matches(ds, expected, m, head.weight.detach())
    assert ds.attrs["classifier"] in ("fc", "classifier.6")
    assert ds["test_acc"].item() == (logits.argmax(1) == ty).double().mean().item()
    assert model.training is False


def test_timm_vit_among_many_linears():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=C, img_size=16,
                              patch_size=8).double().eval()
    x, y = images(20)
    tx, ty = images(10, seed=1)
    ds = measure.collapse(model, batches(x, y), batches(tx, ty), progress=False)
    assert ds.attrs["classifier"] == "head"
    with torch.no_grad():
        feat = lambda xb: model.forward_head(model.forward_features(xb), pre_logits=True)
        h = torch.cat([feat(xb) for xb, _ in batches(x, y)])
        th = torch.cat([feat(xb) for xb, _ in batches(tx, ty)])
    expected, m = reference(h, y, model.head.weight.detach(), model.head.bias.detach(), th, ty)
    assert_matches(ds, expected, m, model.head.weight.detach())


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, C)).double()


def test_dict_batches_equal_tuple_batches_and_keys_can_be_named():
    model = small_cnn()
    x, y = images(20)
    plain = measure.collapse(model, batches(x, y), progress=False)
    hf = [{"pixel_values": xb, "labels": yb.to(torch.int32)} for xb, yb in batches(x, y)]
    assert measure.collapse(model, hf, progress=False).equals(plain)
    named = [{"img": xb, "cls": yb.to(torch.uint8)} for xb, yb in batches(x, y)]
    assert measure.collapse(model, named, input_key="img", label_key="cls", progress=False).equals(plain)
    with pytest.raises(ValueError, match="keys \\['img', 'cls'\\].*input_key"):
        measure.collapse(model, named, progress=False)


def identity_head(W, b, dtype=torch.float64):
    head = nn.Linear(W.shape[1], W.shape[0]).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(W))
        head.bias.copy_(torch.as_tensor(b))
    return nn.Sequential(nn.Identity(), head)


def test_planted_etf_through_an_identity_model():
    rng = np.random.default_rng(3)
    p, n = 12, 9
    M = simplex_etf(p, C, scale=2.5, rng=rng)
    mu_G = rng.standard_normal(p) * 4
    A = rng.standard_normal((p, 3)) * 0.1
    h, y = planted_features(M, mu_G, A, n, rng)
    th, ty = planted_features(M, mu_G, A, 4, rng)
    model = identity_head(0.3 * M.T, -0.3 * M.T @ mu_G)
    to_t = lambda a: torch.as_tensor(a)
    ds = measure.collapse(model, batches(to_t(h), to_t(y), 7), batches(to_t(th), to_t(ty), 6), progress=False)
    assert ds["nc1"].item() == pytest.approx(nc1_closed_form(M, A), rel=1e-10)
    for key in ("equinorm_means", "equinorm_classifiers", "equiangular_means", "maxangle_means", "self_duality",
                "etf_error_means", "etf_error_classifiers", "classifier_mean_alignment"):
        assert abs(ds[key].item()) < 1e-10, key
    assert ds["ncc_mismatch"].item() == 0.0
    # the test set has the same within-class covariance about the same means: test NC1 is the same closed form
    assert ds["nc1_test"].item() == pytest.approx(nc1_closed_form(M, A), rel=1e-10)
    np.testing.assert_allclose(ds["class_means"].values, (mu_G[:, None] + M).T, atol=1e-12)


def test_bf16_features_equal_float64_on_the_upcast_features():
    rng = np.random.default_rng(4)
    p = 16
    M = simplex_etf(p, C, scale=2.0, rng=rng)
    h, y = planted_features(M, np.zeros(p), rng.standard_normal((p, 4)) * 0.3, 8, rng)
    hb = torch.as_tensor(h).to(torch.bfloat16)
    W = torch.as_tensor(0.5 * M.T).to(torch.bfloat16)
    model = identity_head(W, torch.zeros(C), torch.bfloat16)
    yt = torch.as_tensor(y)
    ds = measure.collapse(model, batches(hb, yt), batches(hb, yt), progress=False)
    expected, m = reference(hb.double(), yt, W.double(), torch.zeros(C, dtype=torch.float64), hb.double(), yt)
    expected.pop("ncc_mismatch")  # bf16 logits decide the model's argmax: compared below on float64 logits
    assert_matches(ds, expected, m, W)
    assert ds["nc1"].dtype == np.float64


def mlp(p_in=6, width=8, heads=1):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(p_in, width), nn.ReLU())
            self.fc = nn.Linear(width, C)
            if heads == 2:
                self.aux = nn.Linear(width, C)

        def forward(self, x):
            return self.fc(self.body(x))
    return Net().double()


def small_loader(n=20, p_in=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return batches(torch.randn(n, p_in, generator=g, dtype=torch.float64), torch.arange(n) % C)


def test_two_heads_and_no_head_are_errors_that_list_the_candidates():
    with pytest.raises(ValueError, match="2 candidate heads.*fc, aux.*classifier="):
        measure.collapse(mlp(heads=2), small_loader(), progress=False)
    ds = measure.collapse(mlp(heads=2), small_loader(), classifier="fc", progress=False)
    assert ds.attrs["classifier"] == "fc"
    conv = nn.Sequential(nn.Conv2d(3, C, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    x, y = images(10)
    with pytest.raises(ValueError, match="no nn.Linear.*features="):
        measure.collapse(conv, batches(x, y), progress=False)
    ds = measure.collapse(conv, batches(x, y), features="1", progress=False)  # no head: classifier measures NaN
    assert math.isnan(ds["self_duality"].item()) and not math.isnan(ds["nc1"].item())
    with pytest.raises(ValueError, match="features='bdy'.*close names: body"):
        measure.collapse(mlp(), small_loader(), features="bdy", progress=False)


def test_bad_batches_are_errors_naming_the_value():
    model = mlp()
    loader = small_loader()
    x, y = loader[1]
    with pytest.raises(TypeError, match="batch 1 has labels of dtype torch.float32"):
        measure.collapse(model, [loader[0], (x, y.float())], progress=False)
    with pytest.raises(ValueError, match="batch 1 has label 9, outside num_classes=5"):
        measure.collapse(model, [loader[0], (x, y + 5)], progress=False)
    with pytest.raises(ValueError, match="label 4, outside num_classes=3"):
        measure.collapse(model, loader, num_classes=3, classifier="fc", progress=False)
    with pytest.raises(ValueError, match="no sample of class\\(es\\) \\[3, 4\\]"):
        measure.collapse(model, [(x, y % 3)], num_classes=C, progress=False)
    bad = x.clone()
    bad[2, 0] = math.inf  # the ReLU body keeps inf (or makes NaN) in the features
    with pytest.raises(FloatingPointError, match="features of batch 2 are not finite"):
        measure.collapse(model, [loader[0], loader[1], (bad, y)], progress=False)
    with pytest.raises(ValueError, match="train= yielded no batch"):
        measure.collapse(model, [], progress=False)
    with pytest.raises(ValueError, match="test= yielded no batch"):
        measure.collapse(model, loader, [], progress=False)


def test_degenerate_means_and_single_samples_warn():
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 1e-13], [2.0, -1e-13]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2])
    model = identity_head(torch.eye(3, 2, dtype=torch.float64), torch.zeros(3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = measure.collapse(model, [(h, y)], progress=False)
    text = " ".join(str(w.message) for w in seen)
    assert "nearly degenerate" in text and "[0, 1] have one train sample" in text
    assert ds["nc1"].item() >= 0


def test_shards_saved_and_merged_equal_one_pass(tmp_path):
    model = small_cnn()
    x, y = images(30)
    tx, ty = images(14, seed=1)
    train, test = batches(x, y, 6), batches(tx, ty, 5)
    whole = measure.collapse(model, train, test, progress=False)
    for k, part in enumerate((train[:2], train[2:3], train[3:])):
        measure.train_stats(model, part, progress=False).save(tmp_path / f"train-{k}.pt")
    merged = measure.merge(measure.load_train(tmp_path / f"train-{k}.pt") for k in range(3))
    for k, part in enumerate((test[:1], test[1:])):
        measure.test_stats(model, part, merged, progress=False)[0].save(tmp_path / f"test-{k}.pt")
    merged_test = measure.merge(measure.load_test(tmp_path / f"test-{k}.pt", merged) for k in range(2))
    ds = measure.from_stats(merged, merged_test)
    for key in whole.data_vars:
        np.testing.assert_allclose(ds[key].values, whole[key].values, rtol=1e-12, atol=1e-13, err_msg=key)
    other = measure.train_stats(model, train[:1], progress=False)
    with pytest.raises(ValueError, match="different train moments|other train moments"):
        measure.load_test(tmp_path / "test-0.pt", other)
