"""nc.models: shapes, the Network contract, published and torchvision parameter counts, memory-efficient DenseNet,
the fixed simplex-ETF classifier, the feature projection, per-block outputs, the VGG head order."""

import functools
import math

import pytest
import torch
import torch.nn as nn
import torchvision

from nc import models
from nc.models import NETWORKS, build, parameter_count

torch.set_num_threads(1)  # tiny models: a second thread only adds contention

# The paper's networks (Section 2F and its Table 1): each must be registered, in its family's row.
PAPER_NETWORKS = {'vgg11': 'vgg', 'vgg13': 'vgg', 'vgg16': 'vgg', 'vgg19': 'vgg', 'resnet18': 'resnet',
                  'resnet34': 'resnet', 'resnet50': 'resnet', 'resnet101': 'resnet', 'resnet152': 'resnet',
                  'densenet40': 'densenet', 'densenet100': 'densenet', 'densenet201': 'densenet',
                  'densenet250': 'densenet'}
ONE_PER_FAMILY = ['vgg11', 'resnet18', 'resnet50', 'densenet40', 'densenet201']
SMALL_PER_FAMILY = ['vgg11', 'resnet18', 'densenet40']


@functools.cache
def on_meta(network, num_classes=10, **kwargs):
    """build(...) on the meta device: shapes only. Cached: callers only read it."""
    with torch.device('meta'):
        return build(network, num_classes, **kwargs)


def test_the_papers_networks_are_registered_in_their_rows():
    assert {n: models.family(n) for n in PAPER_NETWORKS} == PAPER_NETWORKS
    assert set(PAPER_NETWORKS) <= set(NETWORKS) and NETWORKS == list(models.REGISTRY)
    assert set(models.FAMILY_TITLES) == set(models.FAMILIES)
    assert models.family('densenet22') == 'densenet'
    with pytest.raises(ValueError, match="alexnet"):
        models.family('alexnet')


@pytest.mark.parametrize('network', NETWORKS)
def test_every_registered_network_honours_the_network_contract(network):
    """Parametrised over the registry: h = features(x) has feature_dim columns, model(x) = classifier(h), blocks()
    end at h, on 16 x 16 images (meta device: shapes only)."""
    model = on_meta(network, 10, in_channels=3, image_size=16, width=0.125)
    x = torch.empty(2, 3, 16, 16, device='meta')
    h = model.features(x)
    assert tuple(h.shape) == (2, model.feature_dim) and tuple(model(x).shape) == (2, 10)
    assert model.blocks() and model.blocks()[-1][1] is model.features.get_submodule(model.block_paths[
        model.blocks()[-1][0]])


def test_a_network_registered_the_documented_way_is_built_and_given_its_row():
    """The README's recipe: models.register(name, family, build) with build returning (features, p, blocks)."""
    def tiny(num_classes, in_channels, image_size, width, stem, **options):
        features = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 12), nn.ReLU())
        return features, 12, {'hidden': '1', 'h': '2'}

    models.register('tiny_mlp', 'vgg', tiny)
    try:
        model = build('tiny_mlp', 5, in_channels=1, image_size=4)
        assert models.family('tiny_mlp') == 'vgg' and models.known('tiny_mlp')
        assert tuple(model(torch.randn(3, 1, 4, 4)).shape) == (3, 5) and model.feature_dim == 12
        assert [n for n, _ in model.blocks()] == ['hidden', 'h']
        with pytest.raises(ValueError, match='registered already'):
            models.register('tiny_mlp', 'vgg', tiny)
        with pytest.raises(ValueError, match='family must be one of'):
            models.register('odd', 'transformer', tiny)
    finally:
        models.REGISTRY.pop('tiny_mlp', None)
        models.NETWORKS.remove('tiny_mlp')


# --- shapes and the Network contract (CPU, float64 so that equalities are exact) -------------------------------

def check_contract(model, in_channels, image_size, num_classes):
    model = model.double().eval()
    x = torch.randn(3, in_channels, image_size, image_size, dtype=torch.float64)
    seen = []
    model.classifier.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        logits = model(x)
        features = model.features(x)
    assert isinstance(model, models.Network) and isinstance(model.classifier, nn.Linear)
    assert model.classifier.bias is not None
    assert model.classifier.in_features == model.feature_dim and model.classifier.out_features == num_classes
    assert logits.shape == (3, num_classes) and features.shape == (3, model.feature_dim)
    assert torch.equal(seen[0], features)  # the hook sees exactly h = features(x)
    W, b = model.classifier.weight, model.classifier.bias
    assert torch.allclose(logits, features @ W.T + b, rtol=0, atol=1e-12)


SIZES = [(1, 16), (1, 28), (3, 32)]


@pytest.mark.parametrize('in_channels,image_size', SIZES)
@pytest.mark.parametrize('width', [0.125, 0.25])
@pytest.mark.parametrize("network", list(PAPER_NETWORKS))
def test_shapes_and_contract(network, width, in_channels, image_size):
    torch.manual_seed(0)
    model = build(network, 7, in_channels=in_channels, image_size=image_size, width=width)
    check_contract(model, in_channels, image_size, 7)


@pytest.mark.parametrize('in_channels,image_size', SIZES)
@pytest.mark.parametrize('network', SMALL_PER_FAMILY)
def test_shapes_and_contract_full_width(network, in_channels, image_size):
    torch.manual_seed(0)
    check_contract(build(network, 10, in_channels=in_channels, image_size=image_size), in_channels, image_size, 10)


@pytest.mark.parametrize('network,width,feature_dim', [
    ('vgg11', 0.25, 128), ('resnet18', 0.25, 128), ('resnet50', 0.25, 512), ('resnet18', 0.125, 64),
    # DenseNet-BC-40, k=12*0.25=3: stem 6, +6*3=24 -> 12, +18=30 -> 15, +18=33
    ('densenet40', 0.25, 33), ('densenet40', 1.0, 132), ('densenet201', 1.0, 1920), ('resnet152', 1.0, 2048)])
def test_feature_dim(network, width, feature_dim):
    assert models.feature_dim_of(network, 10, 3, 32, width) == feature_dim
    if width < 1:
        assert build(network, 10, width=width).feature_dim == feature_dim


def test_feature_dim_of():
    for network in ['vgg11', 'resnet50', 'densenet40']:
        for kwargs in [dict(width=0.25), dict(width=0.5, feature_dim=9), dict(width=1.0, stem='imagenet')]:
            assert models.feature_dim_of(network, 100, 3, 32, **kwargs) == on_meta(network, 100, **kwargs).feature_dim
    assert models.feature_dim_of('vgg11', 100, 1, 16, 0.0625) == 256  # last conv 32 < C-1 = 99: 4096/16
    assert models.feature_dim_of('vgg11', 100, 1, 16, 0.01) == 99  # 4096/100 = 41 < C-1: widened to C-1
    assert models.feature_dim_of('resnet18', 100, 3, 32, 0.0625, classifier='fixed_etf') == 32  # p < C-1: a number


def test_resnet_stage_widths():
    for width in (0.125, 0.25, 0.3):
        model = build('resnet50', 10, width=width)
        assert model.features.conv1.out_channels == models.scaled(64, width)
        for stage, planes in zip(['layer1', 'layer2', 'layer3', 'layer4'], [64, 128, 256, 512]):
            block = getattr(model.features, stage)[-1]
            assert block.conv2.out_channels == models.scaled(planes, width)
            assert block.conv3.out_channels == 4 * models.scaled(planes, width)


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


def test_resnet18_is_the_authors_notebook_model():
    """Width 1, small stem: the same function as the notebook's torchvision resnet18 with conv1 = 3x3 stride 1 and
    maxpool = MaxPool2d(1, 1), once its weights are loaded into ours."""
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(num_classes=10)
    theirs.conv1 = nn.Conv2d(1, theirs.conv1.weight.shape[0], 3, 1, 1, bias=False)
    theirs.maxpool = nn.MaxPool2d(kernel_size=1, stride=1, padding=0)
    ours = build('resnet18', 10, in_channels=1)
    state = {('classifier' + k[2:] if k.startswith('fc.') else 'features.' + k): v
             for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)  # strict: the same modules under the same names
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(ours.double().eval()(x), theirs.double().eval()(x), rtol=0, atol=1e-12)


def test_growth_rate_parameter():
    model = build('densenet40', 10, growth_rate=4)
    first_layer = model.features.denseblock1.denselayer1
    assert model.features.conv0.out_channels == 8 and first_layer.conv2.out_channels == 4
    assert first_layer.conv1.out_channels == 16  # bottleneck 4k
    assert build('densenet40', 10, growth_rate=4, width=0.5).features.denseblock1.denselayer1.conv2.out_channels == 2
    with pytest.raises(ValueError):
        build('resnet18', 10, growth_rate=4)


def test_densenet_small_stem_is_one_conv():
    model = build('densenet40', 10)
    assert list(model.features.named_children())[:2] == [('conv0', model.features.conv0),
                                                         ('denseblock1', model.features.denseblock1)]
    conv = model.features.conv0
    assert (conv.kernel_size, conv.stride, conv.out_channels, conv.bias) == ((3, 3), (1, 1), 24, None)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert all(layer.drop_rate == 0 for layer in model.modules() if hasattr(layer, 'drop_rate'))


def test_init():
    torch.manual_seed(0)
    model = build('resnet18', 10)
    conv = model.features.layer4[-1].conv2  # last block's second 3x3 conv, 512 -> 512
    assert conv.weight.shape == (512, 512, 3, 3)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)  # Kaiming fan_out
    dense = build('densenet100', 10).features.denseblock3.denselayer16.conv1  # 1x1, 330 -> 48: fan_out 48
    assert dense.weight.std().item() == pytest.approx(math.sqrt(2 / 48), rel=0.03)
    bns = [m for m in build('vgg11', 10).modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)
    assert model.classifier.weight.abs().max() <= 1 / math.sqrt(512)  # default Linear init bound


# --- published CIFAR parameter counts (width 1, 3x32x32, 10 classes), on the meta device ---------------------------

RESNET_COUNTS = {'resnet18': 11_173_962, 'resnet34': 21_282_122, 'resnet50': 23_520_842,  # kuangliu/pytorch-cifar
                 'resnet101': 42_512_970, 'resnet152': 58_156_618}


@pytest.mark.parametrize('network', list(RESNET_COUNTS))
def test_resnet_parameter_counts(network):
    assert parameter_count(on_meta(network)) == RESNET_COUNTS[network]


@pytest.mark.parametrize('network,millions', [('densenet100', 0.77), ('densenet250', 15.3),  # Huang et al. Table 2
                                              ('densenet40', 0.18)])  # ref. 18's BC-40
def test_densenet_bc_parameter_counts(network, millions):
    decimals = len(str(millions).split('.')[1])
    assert abs(parameter_count(on_meta(network)) - millions * 1e6) <= 0.5 * 10 ** -decimals * 1e6  # printed digit
    assert parameter_count(on_meta('densenet40')) == 176_122


def plain_densenet(depth=40, k=12, num_classes=10):
    """Huang et al.'s DenseNet without bottleneck and compression: 16-map stem, 3 blocks of (depth-4)/3
    BN-ReLU-Conv3x3 layers, transitions BN-ReLU-Conv1x1(c -> c)-AvgPool, final BN, Linear."""
    layers, channels = [nn.Conv2d(3, 16, 3, padding=1, bias=False)], 16
    for block in range(3):
        for _ in range((depth - 4) // 3):
            layers += [nn.BatchNorm2d(channels), nn.Conv2d(channels, k, 3, padding=1, bias=False)]
            channels += k
        if block < 2:
            layers += [nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 1, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(channels), nn.Linear(channels, num_classes))


def test_densenet40_is_bc_not_plain():
    with torch.device('meta'):
        plain = parameter_count(plain_densenet())
    assert abs(plain - 1.0e6) <= 0.05e6  # Huang et al. Table 2: DenseNet (L=40, k=12) 1.0M
    assert parameter_count(on_meta('densenet40')) < plain / 5
    assert 'BC-40' in models.DENSENET_NOTE and '0.18M' in models.DENSENET_NOTE and '1.0M' in models.DENSENET_NOTE


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
    assert parameter_count(on_meta(network)) == conv_stack + head + final_linear


def test_hundred_classes_only_change_the_last_layer():
    for network in ['vgg11', 'vgg19', 'resnet18', 'resnet50', 'densenet40', 'densenet100']:
        p = on_meta(network).feature_dim
        assert parameter_count(on_meta(network, 100)) - parameter_count(on_meta(network)) == 90 * (p + 1)


# --- ImageNet stems: torchvision's networks, on the meta device -----------------------------------------------

def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_imagenet_resnet152_and_densenet201_are_torchvisions():
    with torch.device('meta'):
        ours = build('resnet152', 1000, image_size=224, stem='imagenet')
        theirs = torchvision.models.resnet152()
    assert parameter_count(ours) == parameter_count(theirs) == 60_192_808
    renamed = {('classifier' + k[2:] if k.startswith('fc.') else 'features.' + k): s
               for k, s in shapes(theirs.state_dict()).items()}
    assert shapes(ours.state_dict()) == renamed
    with torch.device('meta'):
        ours = build('densenet201', 1000, image_size=224, stem='imagenet', memory_efficient=True)
        theirs = torchvision.models.densenet201(memory_efficient=True)
    assert parameter_count(ours) == parameter_count(theirs) == 20_013_928
    assert shapes(ours.state_dict()) == shapes(theirs.state_dict())  # the very same names
    assert ours.features.pool0.kernel_size == 3 and ours.features.conv0.kernel_size == (7, 7)


def test_imagenet_vgg19_bn_with_batchnorm_for_dropout():
    with torch.device('meta'):
        ours = build('vgg19', 1000, image_size=224, stem='imagenet')
        theirs = torchvision.models.vgg19_bn()
    assert parameter_count(theirs) == 143_678_248
    assert parameter_count(ours) == 143_678_248 + 2 * 2 * 4096 == 143_694_632  # two BatchNorm1d(4096) for dropout
    conv = {k: s for k, s in shapes(theirs.state_dict()).items() if k.startswith('features.')}
    assert {k: s for k, s in shapes(ours.state_dict()).items() if k in conv} == conv
    assert ours.features.fc6[0].in_features == 512 * 7 * 7 and ours.feature_dim == 4096
    assert not any(isinstance(m, nn.Dropout) for m in ours.modules())


@pytest.mark.parametrize('network', ['vgg19', 'resnet152', 'densenet201'])
def test_imagenet_forward_at_224_px(network):
    torch.manual_seed(0)
    model = build(network, 6, image_size=224, width=0.0625, stem='imagenet', memory_efficient=True)
    check_contract(model, 3, 224, 6)


# --- memory-efficient DenseNet ---------------------------------------------------------------------------------

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


def train_step(model, x, head):
    calls = count_bottleneck_calls(model)
    model.train()
    x_model = x.clone().requires_grad_()
    out = model(x_model)
    (out * head).sum().backward()
    return out, x_model.grad, calls


def test_torchvision_memory_efficient_updates_running_stats_twice():
    """Why CheckpointedDenseLayer exists; if this fails, torchvision fixed it and the class can go."""
    torch.manual_seed(0)
    plain = torchvision.models.DenseNet(4, (2, 2), 8, num_classes=3).double()
    efficient = torchvision.models.DenseNet(4, (2, 2), 8, num_classes=3, memory_efficient=True).double()
    efficient.load_state_dict(plain.state_dict())
    x, head = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for model in (plain, efficient):
        train_step(model, x, head)
    norm1 = 'features.denseblock1.denselayer1.norm1.'
    p, e = plain.state_dict(), efficient.state_dict()
    assert p[norm1 + 'num_batches_tracked'] == 1 and e[norm1 + 'num_batches_tracked'] == 2
    assert not torch.allclose(p[norm1 + 'running_mean'], e[norm1 + 'running_mean'])


@pytest.mark.parametrize('network,kwargs', [('densenet40', dict(width=0.5)),
                                            ('densenet201', dict(width=0.125, image_size=16))])
def test_memory_efficient_densenet_matches_plain(network, kwargs):
    torch.manual_seed(0)
    plain = build(network, 10, memory_efficient=False, **kwargs).double()
    efficient = build(network, 10, memory_efficient=True, **kwargs).double()
    efficient.load_state_dict(plain.state_dict())
    size = kwargs.get('image_size', 32)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    head = torch.randn(4, 10, dtype=torch.float64)
    (out_p, grad_p, calls_p), (out_e, grad_e, calls_e) = train_step(plain, x, head), train_step(efficient, x, head)
    num_layers = sum(hasattr(m, 'memory_efficient') for m in plain.modules())
    assert len(calls_p) == num_layers and len(calls_e) == 2 * num_layers  # really recomputed in backward
    assert torch.allclose(out_p, out_e, rtol=0, atol=1e-10)
    assert torch.allclose(grad_p, grad_e, rtol=0, atol=1e-10)
    for (name, p), (_, e) in zip(plain.named_parameters(), efficient.named_parameters()):
        assert torch.allclose(p.grad, e.grad, rtol=1e-9, atol=1e-10), name
    for (name, p), (_, e) in zip(plain.named_buffers(), efficient.named_buffers()):
        assert torch.allclose(p.double(), e.double(), rtol=0, atol=1e-12), name  # updated once, not twice

    # eval mode, torch.autograd.grad w.r.t. the input (as in DeepFool): same gradients, running stats untouched
    before = {k: v.clone() for k, v in efficient.state_dict().items()}
    grads = []
    for model in (plain.eval(), efficient.eval()):
        x_model = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(model(x_model)[:, 3].sum(), x_model)[0])
    assert torch.allclose(*grads, rtol=0, atol=1e-10)
    assert all(torch.equal(before[k], v) for k, v in efficient.state_dict().items())


# --- fixed simplex-ETF classifier (Zhu et al. 2021) ------------------------------------------------------------

@pytest.mark.parametrize('C,p', [(2, 1), (3, 2), (10, 9), (10, 10), (10, 64), (100, 512)])
def test_simplex_etf_gram(C, p):
    W = models.simplex_etf(C, p, seed=3)
    assert W.dtype == torch.float64 and W.shape == (C, p)
    expected = C / (C - 1) * (torch.eye(C, dtype=torch.float64) - 1 / C)
    assert torch.allclose(W @ W.T, expected, rtol=0, atol=1e-12)
    assert torch.equal(W, models.simplex_etf(C, p, seed=3))
    if p > 1:  # (C = 2, p = 1 has only the two ETFs +-[1, -1])
        assert not torch.allclose(W, models.simplex_etf(C, p, seed=4))
    with pytest.raises(ValueError):
        models.simplex_etf(C, C - 2, seed=0)


def test_fixed_etf_classifier_is_frozen_under_sgd():
    torch.manual_seed(0)
    learned = build('vgg11', 10, in_channels=1, image_size=16, width=0.125)
    torch.manual_seed(0)
    model = build('vgg11', 10, in_channels=1, image_size=16, width=0.125, classifier='fixed_etf', etf_seed=5,
                  etf_bias='zero')
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith('classifier')}
    assert all(torch.equal(v, learned.state_dict()[k]) for k, v in backbone.items())  # global RNG untouched
    W, b = model.classifier.weight, model.classifier.bias
    assert torch.equal(W, models.simplex_etf(10, model.feature_dim, 5).float()) and torch.all(b == 0)
    assert not W.requires_grad and not b.requires_grad
    W0, b0 = W.detach().clone(), b.detach().clone()
    others = {n: q.detach().clone() for n, q in model.named_parameters() if not n.startswith('classifier')}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)  # as nc.train
    x, y = torch.randn(16, 1, 16, 16), torch.arange(16) % 10
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert W.grad is None and b.grad is None
    assert torch.equal(W, W0) and torch.equal(b, b0)  # bitwise: SGD skips parameters whose .grad is None
    assert any(not torch.equal(q, others[n]) for n, q in model.named_parameters() if n in others)  # it did train
    default = build('vgg11', 10, in_channels=1, image_size=16, width=0.125, classifier='fixed_etf', etf_seed=5)
    assert not default.classifier.weight.requires_grad and default.classifier.bias.requires_grad  # Zhu et al.


def test_fixed_etf_in_float64_and_minimal_dimension():
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        model = build('resnet18', 10, width=0.125, classifier='fixed_etf', feature_dim=9)  # p = C - 1
    finally:
        torch.set_default_dtype(default)
    W = model.classifier.weight
    assert W.dtype == torch.float64 and W.shape == (10, 9)
    assert torch.allclose(W @ W.T, 10 / 9 * (torch.eye(10, dtype=torch.float64) - 0.1), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='p >= C - 1'):
        build('resnet18', 100, width=0.125, classifier='fixed_etf')  # p = 64 < 99
    with pytest.raises(ValueError):
        build('resnet18', 10, classifier='etf')
    assert on_meta('resnet18', 10, classifier='fixed_etf').classifier.weight.is_meta  # builds on meta too


def test_feature_dim_projection():
    torch.manual_seed(0)
    model = build('resnet18', 10, width=0.125, feature_dim=10, classifier='fixed_etf')
    projection = model.features.projection
    assert isinstance(projection, nn.Linear) and projection.bias is None
    assert (projection.in_features, projection.out_features) == (64, 10) and model.feature_dim == 10
    assert list(model.features.named_children())[-1][0] == 'projection' and model.blocks()[-1][0] == 'projection'
    check_contract(model, 3, 32, 10)
    with pytest.raises(ValueError):
        build('resnet18', 10, feature_dim=0)


# --- per-block outputs ------------------------------------------------------------------------------------------

EXPECTED_BLOCKS = {
    'vgg11': ['conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'conv4_1', 'conv4_2', 'conv5_1', 'conv5_2', 'fc6', 'fc7'],
    'resnet18': ['stem', *(f'layer{s}.{i}' for s in range(1, 5) for i in range(2)), 'avgpool'],
    'densenet40': ['stem', 'denseblock1', 'transition1', 'denseblock2', 'transition2', 'denseblock3', 'norm',
                   'avgpool'],
}


@pytest.mark.parametrize('network,stem', [('vgg11', 'small'), ('resnet18', 'small'), ('densenet40', 'small'),
                                          ('resnet50', 'imagenet'), ('densenet201', 'imagenet'),
                                          ('vgg13', 'imagenet')])
def test_blocks_fire_in_forward_order_and_end_at_h(network, stem):
    torch.manual_seed(0)
    model = build(network, 5, in_channels=1, image_size=16 if stem == 'small' else 64, width=0.125, stem=stem,
                  memory_efficient=True).double()
    blocks = model.blocks()
    names = [name for name, _ in blocks]
    if network in EXPECTED_BLOCKS:
        assert names == EXPECTED_BLOCKS[network]
    assert len(set(names)) == len(names) and len({id(m) for _, m in blocks}) == len(blocks)
    fired = []
    for name, module in blocks:
        module.register_forward_hook(lambda m, i, out, name=name: fired.append((name, out, out.clone())))
    x = torch.randn(4, 1, *(2 * [16 if stem == 'small' else 64]), dtype=torch.float64)
    for mode in (model.train, model.eval):
        mode()
        fired.clear()
        with torch.no_grad():
            h = model.features(x)
        assert [name for name, _, _ in fired] == names
        assert torch.equal(fired[-1][1], h)
        assert all(out.dim() in (2, 4) and out.shape[0] == 4 for _, out, _ in fired)
        assert all(torch.equal(out, copy) for _, out, copy in fired)  # nothing modified a kept output in place


def test_resnet152_blocks_count():
    assert len(on_meta('resnet152').blocks()) == 1 + (3 + 8 + 36 + 3) + 1


# --- the VGG head: Linear-ReLU-BatchNorm1d where torchvision has Linear-ReLU-Dropout ----------------------------

def test_vgg_head_order():
    model = build('vgg11', 10, width=0.25).double()
    for fc in (model.features.fc6, model.features.fc7):
        assert [type(m) for m in fc] == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    # BatchNorm is the last operation: in training mode h has batch mean beta = 0 and batch variance 1 - eps-ish,
    # and negative entries (with ReLU last, h would be >= 0)
    h = model.train().features(torch.randn(64, 3, 32, 32, dtype=torch.float64))
    assert torch.allclose(h.mean(0), torch.zeros(h.shape[1], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.var(0, unbiased=False), torch.ones(h.shape[1], dtype=torch.float64), atol=1e-3)
    assert (h < 0).any()
    assert 'Linear-ReLU-BatchNorm1d' in models.VGG_NOTE


# --- channels_last ---------------------------------------------------------------------------------------------

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


# --- errors ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('network', ['resnet20', 'vgg8', 'densenet41', 'densenet4', 'densenet', 'alexnet'])
def test_unknown_network(network):
    with pytest.raises(ValueError) as error:
        build(network, 10)
    assert all(name in str(error.value) for name in PAPER_NETWORKS)


def test_bad_stem():
    with pytest.raises(ValueError):
        build('resnet18', 10, stem='cifar')


def test_any_bc_depth():
    model = build('densenet22', 10, in_channels=1, image_size=16)  # 3 layers per block, k=12
    assert [len(m) for n, m in model.features.named_children() if n.startswith('denseblock')] == [3, 3, 3]
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
