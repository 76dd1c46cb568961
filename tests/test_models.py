"""nc.models: shapes, the features/classifier split, published parameter counts, memory-efficient DenseNet."""

import math

import pytest
import torch
import torch.nn as nn

from nc.models import NETWORKS, build, parameter_count

torch.set_num_threads(1)  # tiny models: a second thread only adds contention

ALL_NETWORKS = ['vgg11', 'vgg13', 'vgg16', 'vgg19', 'resnet18', 'resnet34', 'resnet50', 'resnet101',
                'resnet152', 'densenet40', 'densenet100', 'densenet201', 'densenet250']
ONE_PER_FAMILY = ['vgg11', 'resnet18', 'resnet50', 'densenet40', 'densenet201']


def test_network_names():
    assert NETWORKS == ALL_NETWORKS


@pytest.mark.parametrize('in_channels,image_size', [(1, 16), (3, 32)])
@pytest.mark.parametrize('network', ALL_NETWORKS)
def test_shapes_and_features_split(network, in_channels, image_size):
    torch.manual_seed(0)
    model = build(network, num_classes=7, in_channels=in_channels, image_size=image_size, width=0.25).eval()
    x = torch.randn(3, in_channels, image_size, image_size)
    seen = []
    model.classifier.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        logits = model(x)
        features = model.features(x)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.bias is not None
    assert model.classifier.in_features == model.feature_dim and model.classifier.out_features == 7
    assert logits.shape == (3, 7) and features.shape == (3, model.feature_dim)
    assert torch.equal(seen[0], features)  # the hook sees exactly h = features(x)
    assert torch.allclose(logits, model.classifier(features), atol=1e-6)
    assert torch.allclose(logits, features @ model.classifier.weight.T + model.classifier.bias, atol=1e-5)


@pytest.mark.parametrize('network,width,feature_dim', [
    ('vgg11', 0.25, 128), ('resnet18', 0.25, 128), ('resnet50', 0.25, 512),
    # DenseNet-BC-40, k=12*0.25=3: stem 6, +6*3=24 -> 12, +18=30 -> 15, +18=33
    ('densenet40', 0.25, 33), ('densenet40', 1.0, 132)])
def test_feature_dim(network, width, feature_dim):
    assert build(network, 10, width=width).feature_dim == feature_dim


def test_tiny_width_keeps_one_channel():
    for network in ONE_PER_FAMILY:
        model = build(network, 3, in_channels=1, image_size=16, width=0.001).eval()
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert min(c.out_channels for c in convs) >= 1
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_pools_stop_at_one_pixel():
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())
    assert count(build('vgg11', 10, image_size=32), nn.MaxPool2d) == 5
    assert count(build('vgg11', 10, image_size=16), nn.MaxPool2d) == 4
    assert count(build('vgg11', 10, image_size=28), nn.MaxPool2d) == 4  # 28 -> 14 -> 7 -> 3 -> 1
    assert count(build('densenet201', 10, image_size=4, width=0.1), nn.AvgPool2d) == 2
    for network, size in [('vgg13', 28), ('densenet201', 4)]:
        model = build(network, 10, in_channels=1, image_size=size, width=0.1).eval()
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_growth_rate_parameter():
    model = build('densenet40', 10, growth_rate=4)
    first_layer = model.features[1].layers[0]
    assert model.features[0].out_channels == 8 and first_layer.conv2.out_channels == 4
    assert first_layer.conv1.out_channels == 16  # bottleneck 4k
    assert build('densenet40', 10, growth_rate=4, width=0.5).features[1].layers[0].conv2.out_channels == 2
    with pytest.raises(ValueError):
        build('resnet18', 10, growth_rate=4)


def test_init():
    torch.manual_seed(0)
    model = build('resnet18', 10)
    conv = model.features[-3].branch[3]  # last block's second 3x3 conv, 512 -> 512
    assert conv.weight.shape == (512, 512, 3, 3)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)  # Kaiming fan_out
    bns = [m for m in build('vgg11', 10).modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)
    assert model.classifier.weight.abs().max() <= 1 / math.sqrt(512)  # default Linear init bound


# --- published CIFAR parameter counts (width 1, 3x32x32, 10 classes) -------------------------------

def count_on_meta(network):
    with torch.device('meta'):
        return parameter_count(build(network, 10))


@pytest.mark.parametrize('network,millions', [
    ('resnet18', 11.17), ('resnet34', 21.28), ('resnet50', 23.52), ('resnet101', 42.51),
    ('resnet152', 58.16),                      # kuangliu/pytorch-cifar
    ('densenet100', 0.77), ('densenet250', 15.3)])  # Huang et al. 2017 Table 2 (DenseNet-BC, k=12 / k=24)
def test_published_parameter_counts(network, millions):
    decimals = len(str(millions).split('.')[1])
    assert abs(count_on_meta(network) - millions * 1e6) <= 0.5 * 10 ** -decimals * 1e6  # to the printed digit


VGG_CONV_CHANNELS = {  # configs A, B, D, E without the pools
    'vgg11': [64, 128, 256, 256, 512, 512, 512, 512],
    'vgg13': [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
    'vgg16': [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    'vgg19': [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]}
KUANGLIU_VGG_MILLIONS = {'vgg11': 9.23, 'vgg13': 9.42, 'vgg16': 14.73, 'vgg19': 20.04}


@pytest.mark.parametrize('network', list(VGG_CONV_CHANNELS))
def test_vgg_parameter_count(network):
    conv_stack, channels = 0, 3
    for out in VGG_CONV_CHANNELS[network]:
        conv_stack += 3 * 3 * channels * out + out + 2 * out  # conv weight + bias, BN weight + bias
        channels = out
    final_linear = 512 * 10 + 10
    # kuangliu's CIFAR VGG = this conv stack + Linear(512, 10): checks the arithmetic above
    assert abs(conv_stack + final_linear - KUANGLIU_VGG_MILLIONS[network] * 1e6) <= 0.005e6
    head = 2 * (512 * 512 + 512 + 2 * 512)  # (Linear(512, 512) + BatchNorm1d(512)) x 2 replacing dropout
    assert count_on_meta(network) == conv_stack + head + final_linear


# --- memory-efficient DenseNet ---------------------------------------------------------------------

def plain_and_efficient(network, **kwargs):
    torch.manual_seed(0)
    plain = build(network, 10, memory_efficient=False, **kwargs)
    efficient = build(network, 10, memory_efficient=True, **kwargs)
    efficient.load_state_dict(plain.state_dict())
    return plain, efficient


def count_bottleneck_calls(model):
    """Count every run of each DenseLayer's conv1 (module hooks do not fire in checkpoint recomputation)."""
    calls = []
    for module in model.modules():
        if hasattr(module, 'memory_efficient'):
            def counted(x, conv=module.conv1, forward=module.conv1.forward):
                calls.append(conv)
                return forward(x)
            module.conv1.forward = counted
    return calls


@pytest.mark.parametrize('network,kwargs', [('densenet40', dict(width=0.5)),
                                            ('densenet201', dict(width=0.125, image_size=16))])
def test_memory_efficient_densenet_matches_plain(network, kwargs):
    plain, efficient = plain_and_efficient(network, **kwargs)
    size = kwargs.get('image_size', 32)
    x = torch.randn(4, 3, size, size)
    head = torch.randn(4, 10)
    results = []
    for model in (plain, efficient):
        calls = count_bottleneck_calls(model)
        model.train()
        x_model = x.clone().requires_grad_()
        out = model(x_model)
        (out * head).sum().backward()
        results.append((out, x_model.grad, calls))
    (out_p, grad_p, calls_p), (out_e, grad_e, calls_e) = results
    num_layers = sum(hasattr(m, 'memory_efficient') for m in plain.modules())
    assert len(calls_p) == num_layers and len(calls_e) == 2 * num_layers  # really recomputed in backward
    assert torch.allclose(out_p, out_e, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad_p, grad_e, rtol=1e-5, atol=1e-7)
    for (name, p), (_, e) in zip(plain.named_parameters(), efficient.named_parameters()):
        assert torch.allclose(p.grad, e.grad, rtol=1e-4, atol=1e-6), name
    for (name, p), (_, e) in zip(plain.named_buffers(), efficient.named_buffers()):
        assert torch.allclose(p, e, rtol=1e-5, atol=1e-7), name  # running stats updated once, not twice

    # eval mode, torch.autograd.grad w.r.t. the input (as in DeepFool): same gradients
    grads = []
    for model in (plain.eval(), efficient.eval()):
        x_model = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(model(x_model)[:, 3].sum(), x_model)[0])
    assert torch.allclose(*grads, rtol=1e-5, atol=1e-7)


# --- channels_last ---------------------------------------------------------------------------------

@pytest.mark.parametrize('network', ONE_PER_FAMILY)
def test_channels_last(network):
    torch.manual_seed(0)
    model = build(network, 10, width=0.25, memory_efficient=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    x_last = x.to(memory_format=torch.channels_last).requires_grad_()
    out = model(x_last)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    out.sum().backward()  # backward (incl. the checkpointed DenseNet path) runs in channels_last
    assert x_last.grad.shape == x.shape


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('network', ['resnet20', 'vgg8', 'densenet41', 'densenet4', 'densenet', 'alexnet'])
def test_unknown_network(network):
    with pytest.raises(ValueError) as error:
        build(network, 10)
    assert all(name in str(error.value) for name in ALL_NETWORKS)


def test_any_bc_depth():
    model = build('densenet22', 10, in_channels=1, image_size=16)  # 3 layers per block, k=12
    assert [len(m.layers) for m in model.features if hasattr(m, 'layers')] == [3, 3, 3]
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
