"""The paper's three network families (VGG, ResNet, DenseNet), built from torchvision's own modules.

Papyan, Han & Donoho (2020) Section 2F: "We replaced the dropout layers in VGG with batch normalization and set
the dropout rate in DenseNet to zero"; DenseNet201/250 use the memory-efficient implementation of ref. 18
(Pleiss et al. 2017). `stem="small"` (default) is the small-image stem of the authors' notebook (torchvision's
ResNet18 with conv1 = 3x3 stride 1 and a 1x1 max-pool, i.e. none); `stem="imagenet"` keeps torchvision's
224-px stems. `image_size` never chooses the stem: an architecture must not change with a data setting.

Every model is a `Network`: `model.features(x)` maps images (B, C, H, W) to the last-layer features h (B, p),
the input of the final linear layer, in the network's own activation units; `model.classifier` is
`nn.Linear(p, num_classes)` (logits W h + b), so `model(x) == model.classifier(model.features(x))`.
p is `model.feature_dim`; `model.blocks()` lists the per-block outputs for collapse by depth.

Channel counts are the published ones scaled by `width` (max(1, round(c * width))), so small widths give fast
CPU models of the same depth. `image_size` only decides which down-sampling pools are kept (a pool is dropped
once the map is 1x1), so 16x16 and 28x28 inputs work. Parameter counts: see tests/test_models.py.
"""

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torchvision.models import densenet as tv_densenet
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

FAMILIES = ("vgg", "resnet", "densenet")
FAMILY_TITLES = {"vgg": "VGG", "resnet": "ResNet", "densenet": "DenseNet"}
STEMS = ("small", "imagenet")
CLASSIFIERS = ("learned", "fixed_etf")
ETF_BIASES = ("train", "zero")  # a fixed ETF classifier's bias: trained (Zhu et al.'s default) or frozen at 0

# VGG conv configs (Simonyan & Zisserman 2015, configs A, B, D, E; "M" = 2x2 max-pool), torchvision's lists.
VGG_CONFIGS = {"vgg11": tv_vgg.cfgs["A"], "vgg13": tv_vgg.cfgs["B"], "vgg16": tv_vgg.cfgs["D"],
               "vgg19": tv_vgg.cfgs["E"]}
# ResNet (He et al. 2016): torchvision's block type and blocks per stage.
RESNET_CONFIGS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3]),
    "resnet152": (tv_resnet.Bottleneck, [3, 8, 36, 3]),
}
# DenseNet-BC (Huang et al. 2017): depth -> default growth rate k. CIFAR-style 3 blocks of (depth - 4) // 6
# layers, except densenet201: the ImageNet 4-block config.
DENSENET_GROWTH_RATES = {"densenet40": 12, "densenet100": 12, "densenet201": 32, "densenet250": 24}
DENSENET201_BLOCKS = [6, 12, 48, 32]
DENSENET_DEFAULT_GROWTH_RATE = 12  # for any other 'densenet<depth>'


@dataclass(frozen=True)
class Entry:
    """A registered network: its name, its family (the figures' row: one of FAMILIES) and its builder,
    `build(num_classes, in_channels, image_size, width, stem, **options) -> (features, p, block_paths)` with
    `features` an nn.Sequential mapping images (B, C, H, W) to h (B, p) and `block_paths` {block name: path inside
    features} in forward order. Options it does not take (growth_rate, memory_efficient) raise ValueError."""
    name: str
    family: str
    build: Callable


REGISTRY: dict[str, Entry] = {}
NETWORKS: list[str] = []  # the registered names, in registration order (the paper's, then any added)


def register(name: str, family: str, build: Callable) -> Entry:
    """Add a network under `name` (timm-style: one entry per network); `family` picks its row in the figures."""
    if family not in FAMILIES:
        raise ValueError(f"network {name!r}: family must be one of {FAMILIES} (the figures' rows), got {family!r}")
    if name in REGISTRY:
        raise ValueError(f"network {name!r} is registered already")
    REGISTRY[name] = entry = Entry(name, family, build)
    NETWORKS.append(name)
    return entry

VGG_NOTE = (
    "VGG: torchvision's VGG with BatchNorm after every convolution (make_layers(cfg, batch_norm=True)). The paper "
    "'replaced the dropout layers in VGG with batch normalization': we put a BatchNorm1d where each of torchvision's "
    "two Dropout layers was, so the head is Linear-ReLU-BatchNorm1d twice (not Linear-BatchNorm1d-ReLU). That is the "
    "literal substitution in the torchvision model the authors build on (their notebook modifies torchvision's "
    "ResNet18 in place); reordering to Linear-BN-ReLU would be a second change the paper does not mention. So h, the "
    "input of the last layer, is a BatchNorm output (signed), not a ReLU output. Small images: the head is as wide "
    "as the last conv (512 x width) unless that is below C - 1, then 4096 x width (at least C - 1); ImageNet: "
    "4096 x width after a 7x7 average pool, as torchvision."
)
DENSENET_NOTE = (
    "DenseNet40 is DenseNet-BC-40 (k = 12, bottleneck 1x1 convs of 4k maps and compression 0.5, about 0.18M "
    "parameters): the memory-efficient DenseNet code the paper cites (ref. 18, gpleiss/efficient_densenet_pytorch) "
    "builds every depth as a BC network, with 3 blocks of (depth - 4) / 6 layers. Huang et al.'s plain DenseNet-40 "
    "(k = 12, no bottleneck, no compression) would have 1.0M. The small-image stem is a single 3x3 convolution to 2k "
    "maps with no BatchNorm, ReLU or pool after it, as in ref. 18's small_inputs=True and Huang et al.'s CIFAR code; "
    "dropout 0; each dense block and transition is torchvision's."
)


def scaled(channels: int, width: float) -> int:
    """Channel count `channels` scaled by the width multiplier, at least 1."""
    return max(1, round(channels * width))


def global_avg_pool(size: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(size), nn.Flatten())


class Network(nn.Module):
    """features: images -> h (B, feature_dim); classifier: h -> logits (B, num_classes).

    `block_paths` maps each human-readable block name to its module's path inside `features`."""

    def __init__(self, features: nn.Sequential, feature_dim: int, num_classes: int, block_paths: dict):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.block_paths = dict(block_paths)

    def forward(self, x):
        return self.classifier(self.features(x))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """(name, module) in forward order; the last module's output is h. No block's output is later modified in
        place, so a forward hook may keep it. 4-D outputs are feature maps (B, c, H, W)."""
        return [(name, self.features.get_submodule(path)) for name, path in self.block_paths.items()]


# ---------------------------------------------------------------------------------------- VGG

def vgg(config, num_classes, in_channels, image_size, width, stem):
    """Head Linear-ReLU-BatchNorm1d x 2: BatchNorm in torchvision's Dropout slots (why: VGG_NOTE). Blocks: every
    conv-BN-ReLU unit, named as in the VGG paper (conv<stage>_<unit>, counted in the published config even where a
    pool is dropped), then the head's fc6 and fc7 (output h)."""
    cfg, names, size, stage, unit = [], {}, image_size, 1, 0
    for item in config:
        if item == "M":
            stage, unit = stage + 1, 0
            if size > 1:  # pool only while there is something left to pool
                cfg.append("M")
                size //= 2
        else:
            unit += 1
            cfg.append(scaled(item, width))
            names[f"conv{stage}_{unit}"] = str(sum(1 if c == "M" else 3 for c in cfg) - 1)  # the unit's ReLU
    body = tv_vgg.make_layers(cfg, batch_norm=True)  # conv (with bias, as torchvision) - BN - ReLU
    if in_channels != 3:
        body[0] = nn.Conv2d(in_channels, cfg[0], kernel_size=3, padding=1)
    channels = cfg[-1] if cfg[-1] != "M" else cfg[-2]
    if stem == "imagenet":
        pool, flat, head = 7, channels * 49, max(scaled(4096, width), num_classes - 1)
    else:
        pool, flat = 1, channels
        head = channels if channels >= num_classes - 1 else max(scaled(4096, width), num_classes - 1)

    def fc(n_in, n_out):  # torchvision's Linear-ReLU-Dropout with the Dropout replaced by BatchNorm1d
        return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(inplace=True), nn.BatchNorm1d(n_out))

    layers = [*((str(i), m) for i, m in enumerate(body)), ("avgpool", global_avg_pool(pool)),
              ("fc6", fc(flat, head)), ("fc7", fc(head, head))]
    return nn.Sequential(OrderedDict(layers)), head, {**names, "fc6": "fc6", "fc7": "fc7"}


# ------------------------------------------------------------------------------------- ResNet

class WidthScaledResNet(tv_resnet.ResNet):
    """torchvision's ResNet with its fixed stage widths 64/128/256/512 scaled to max(1, round(c * width))."""

    def __init__(self, block, layers, width: float):
        self.width = width  # read by _make_layer, which ResNet.__init__ calls
        super().__init__(block, layers)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # layer1: its input is the (scaled) stem, not torchvision's 64 maps
            self.inplanes = scaled(64, self.width)
        return super()._make_layer(block, scaled(planes, self.width), blocks, stride, dilate)


def resnet(block, layers, in_channels, width, stem):
    """torchvision's ResNet. Small stem as the authors' notebook: conv1 = 3x3 stride 1 (no bias), no max-pool
    (their MaxPool2d(kernel_size=1, stride=1) is the identity). Blocks: the stem, every residual block
    ('layer2.1'), then avgpool (output h = the global average of the last block)."""
    net = WidthScaledResNet(block, layers, width)
    stem_channels = scaled(64, width)
    if stem == "small":
        net.conv1 = nn.Conv2d(in_channels, stem_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    else:  # torchvision's 7x7 stride-2 conv and 3x3 stride-2 max-pool
        net.conv1 = nn.Conv2d(in_channels, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(stem_channels)
    stages = ["layer1", "layer2", "layer3", "layer4"]
    features = nn.Sequential(OrderedDict(
        [(name, getattr(net, name)) for name in ["conv1", "bn1", "relu", "maxpool", *stages]]
        + [("avgpool", global_avg_pool())]))
    blocks = {"stem": "maxpool", **{f"{s}.{i}": f"{s}.{i}" for s in stages for i in range(len(getattr(net, s)))},
              "avgpool": "avgpool"}
    return features, scaled(512, width) * block.expansion, blocks


# ----------------------------------------------------------------------------------- DenseNet

@contextlib.contextmanager
def running_stats_kept(bn: nn.BatchNorm2d):
    """Inside, `bn` computes (and saves for backward) exactly as always; on exit its running statistics and
    num_batches_tracked are put back as they were on entry."""
    saved = [buffer.clone() for buffer in bn.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(bn.buffers(), saved):
                buffer.copy_(value)


class CheckpointedDenseLayer(tv_densenet._DenseLayer):
    """torchvision's memory-efficient dense layer, except that the checkpoint's recomputation in backward leaves
    norm1's running statistics alone. torchvision's recomputation updates them a second time per step
    (tests/test_models.py shows it; gpleiss/efficient_densenet_pytorch#73), so they would drift from the plain
    network's. Same modules and parameters; only this method differs."""

    def call_checkpoint_bottleneck(self, inputs):
        def frozen_on_recompute():  # (context of the forward, context of the recomputation)
            return contextlib.nullcontext(), running_stats_kept(self.norm1)

        return cp.checkpoint(lambda *xs: self.bn_function(list(xs)), *inputs, use_reentrant=False,
                             context_fn=frozen_on_recompute)


def densenet(layers_per_block, growth_rate, in_channels, image_size, width, memory_efficient, stem):
    """torchvision's DenseNet-BC (bn_size 4, compression 0.5, dropout 0). densenet40 is DenseNet-BC-40 (k = 12,
    0.18M parameters) as ref. 18 builds it, not Huang et al.'s plain DenseNet-40 (1.0M): see DENSENET_NOTE.
    Blocks: the stem, every dense block and transition, the final BatchNorm ('norm'), then avgpool (h)."""
    k = scaled(growth_rate, width)
    net = tv_densenet.DenseNet(k, tuple(layers_per_block), 2 * k, bn_size=4, drop_rate=0,
                               memory_efficient=memory_efficient)
    body = net.features
    if stem == "small":
        body.conv0 = nn.Conv2d(in_channels, 2 * k, kernel_size=3, stride=1, padding=1, bias=False)
        del body.norm0, body.relu0, body.pool0
        size, stem_path = image_size, "conv0"
    else:
        body.conv0 = nn.Conv2d(in_channels, 2 * k, kernel_size=7, stride=2, padding=3, bias=False)
        size, stem_path = (image_size - 1) // 4 + 1, "pool0"  # after the stride-2 conv and the stride-2 pool
    for module in body.modules():
        if isinstance(module, tv_densenet._Transition):
            if size > 1:
                size //= 2
            else:
                module.pool = nn.Identity()  # nothing left to pool
        if memory_efficient and isinstance(module, tv_densenet._DenseLayer):
            module.__class__ = CheckpointedDenseLayer  # same modules; running stats updated once (see there)
    blocks = {"stem": stem_path, **{n: n for n, _ in body.named_children() if n.startswith(("dense", "trans"))},
              "norm": "norm5"}
    features = nn.Sequential(OrderedDict([*body.named_children(), ("relu5", nn.ReLU()),  # not in place: norm5's
                                          ("avgpool", global_avg_pool())]))             # output stays intact
    return features, net.classifier.in_features, {**blocks, "avgpool": "avgpool"}


# ------------------------------------------------------------------------------- the registry

def _no_options(name):
    def check(growth_rate=None, memory_efficient=False):
        if growth_rate is not None:
            raise ValueError(f"growth_rate={growth_rate} needs a DenseNet (network {name!r})")
    return check


def _vgg_entry(config, name):
    def build(num_classes, in_channels, image_size, width, stem, **options):
        _no_options(name)(**options)
        return vgg(config, num_classes, in_channels, image_size, width, stem)
    return build


def _resnet_entry(block, layers, name):
    def build(num_classes, in_channels, image_size, width, stem, **options):
        _no_options(name)(**options)
        return resnet(block, layers, in_channels, width, stem)
    return build


def _densenet_entry(name):
    def build(num_classes, in_channels, image_size, width, stem, growth_rate=None, memory_efficient=False):
        if growth_rate is not None and growth_rate < 1:
            raise ValueError(f"growth_rate={growth_rate} must be >= 1 (network {name!r})")
        k = growth_rate or DENSENET_GROWTH_RATES.get(name, DENSENET_DEFAULT_GROWTH_RATE)
        return densenet(densenet_layers_per_block(name), k, in_channels, image_size, width, memory_efficient, stem)
    return build


for _name, _config in VGG_CONFIGS.items():
    register(_name, "vgg", _vgg_entry(_config, _name))
for _name, (_block, _layers) in RESNET_CONFIGS.items():
    register(_name, "resnet", _resnet_entry(_block, _layers, _name))
for _name in DENSENET_GROWTH_RATES:
    register(_name, "densenet", _densenet_entry(_name))


def entry(network: str) -> Entry:
    """The registry entry of `network`; any 'densenet<depth>' with (depth - 4) % 6 == 0 is built on the fly."""
    if network in REGISTRY:
        return REGISTRY[network]
    if densenet_layers_per_block(network) is not None:
        return Entry(network, "densenet", _densenet_entry(network))
    raise ValueError(f"unknown network {network!r}; known: {', '.join(REGISTRY)} "
                     f"(and 'densenet<depth>' for any depth with (depth - 4) % 6 == 0)")


# -------------------------------------------------------------------------------------- build

def densenet_layers_per_block(network: str):
    """[layers per dense block] for 'densenet<depth>', or None if the name is not a valid DenseNet-BC."""
    if network == "densenet201":
        return DENSENET201_BLOCKS
    depth = network.removeprefix("densenet")
    if not network.startswith("densenet") or not depth.isdigit():
        return None
    depth = int(depth)
    if depth < 10 or (depth - 4) % 6:
        return None
    return [(depth - 4) // 6] * 3


def known(network: str) -> bool:
    """Whether `build` knows the name: registered, or densenet<depth> with (depth - 4) % 6 == 0."""
    return network in REGISTRY or densenet_layers_per_block(network) is not None


def family(network: str) -> str:
    """The family (figure row: 'vgg', 'resnet' or 'densenet') of a network `build` accepts."""
    return entry(network).family


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A simplex ETF W (C x p, float64, CPU): W Wᵀ = C/(C-1) (I - 11ᵀ/C), i.e. unit rows w_c with Σ_c w_c = 0.

    W = sqrt(C/(C-1)) Q Rᵀ with Q (C x (C-1)) an orthonormal basis of 1⊥ and R (p x (C-1)) Haar-random with
    orthonormal columns (QR of a Gaussian from torch.Generator seeded with `seed`). For p >= C this is Zhu et al.'s
    sqrt(C/(C-1)) (I - 11ᵀ/C) Pᵀ with P (p x C), PᵀP = I (any P with P Q = R), and it also covers p = C - 1,
    the smallest dimension a simplex ETF fits in. p < C - 1 raises ValueError."""
    C = num_classes
    if C < 2 or dim < C - 1:
        raise ValueError(f"a simplex ETF of {C} classes needs C >= 2 and feature dimension p >= C - 1 = {C - 1}, "
                         f"got p = {dim}: widen the network or pass feature_dim")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    f64 = dict(dtype=torch.float64, device="cpu")  # explicit, so it works under torch.device("meta") too
    R = torch.linalg.qr(torch.randn(dim, C - 1, generator=generator, **f64)).Q
    Q = torch.linalg.qr((torch.eye(C, **f64) - 1 / C)[:, :C - 1]).Q  # its first C-1 columns span 1⊥
    return math.sqrt(C / (C - 1)) * Q @ R.T


def init_weights(model: nn.Module):
    """Kaiming-normal convs (fan_out, ReLU), conv bias 0, BatchNorm weight 1 bias 0, Linear layers PyTorch's default.

    The same for every family and stem. It equals torchvision's own init for ResNet; for VGG torchvision draws the
    Linear weights from N(0, 0.01); for DenseNet it uses fan_in, while Huang et al.'s and ref. 18's code use
    fan_out (N(0, 2 / (k * k * out_channels))). Nothing to do on the meta device (shapes only; slow there)."""
    if next(model.parameters()).is_meta:
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build(network: str, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
          memory_efficient: bool = False, growth_rate: int | None = None, *, stem: str = "small",
          classifier: str = "learned", etf_seed: int = 0, etf_bias: str = "train",
          feature_dim: int | None = None) -> Network:
    """A freshly initialised `Network` by name (REGISTRY; also any 'densenet<depth>' with (depth - 4) % 6 == 0).

    growth_rate overrides the DenseNet default k (before width scaling); memory_efficient applies to DenseNets.
    stem: "small" or "imagenet" (module docstring). feature_dim: append nn.Linear(p, feature_dim, bias=False) to
    `features` (Zhu et al. 2021 use feature_dim = C); no bias, since the classifier's bias already absorbs a shift
    of h and a fixed-ETF classifier should have none. classifier="fixed_etf": W frozen at a simplex ETF
    (`simplex_etf`, seed etf_seed), b starting at 0 and trained (etf_bias "train", Zhu et al.) or frozen at 0
    ("zero"); needs p >= C - 1."""
    if num_classes < 1 or in_channels < 1 or image_size < 1 or not width > 0:
        raise ValueError(f"need num_classes, in_channels, image_size >= 1 and width > 0, got "
                         f"{num_classes=}, {in_channels=}, {image_size=}, {width=}")
    if stem not in STEMS or classifier not in CLASSIFIERS or etf_bias not in ETF_BIASES:
        raise ValueError(f"stem must be one of {STEMS}, classifier one of {CLASSIFIERS} and etf_bias one of "
                         f"{ETF_BIASES}, got {stem=}, {classifier=}, {etf_bias=}")
    if feature_dim is not None and (not isinstance(feature_dim, int) or feature_dim < 1):
        raise ValueError(f"feature_dim must be None or an int >= 1, got {feature_dim!r}")
    options = {"growth_rate": growth_rate} if growth_rate is not None else {}
    if memory_efficient:
        options["memory_efficient"] = True
    features, p, blocks = entry(network).build(num_classes, in_channels, image_size, width, stem, **options)
    if feature_dim is not None:
        features.add_module("projection", nn.Linear(p, feature_dim, bias=False))
        p, blocks = feature_dim, {**blocks, "projection": "projection"}
    model = Network(features, p, num_classes, blocks)
    init_weights(model)
    if classifier == "fixed_etf":
        with torch.no_grad():
            model.classifier.weight.copy_(simplex_etf(num_classes, p, etf_seed))
            model.classifier.bias.zero_()
        model.classifier.weight.requires_grad_(False)  # grad stays None: SGD (decay, momentum too) never touches it
        model.classifier.bias.requires_grad_(etf_bias == "train")
    return model


def feature_dim_of(network: str, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
                   **build_kwargs) -> int:
    """p of `build(network, ...)`, built on the meta device (no memory, no compute). The classifier options do not
    change p and are ignored, so a fixed-ETF cell with p < C - 1 gets its number here, not an error."""
    build_kwargs = {k: v for k, v in build_kwargs.items() if k not in ("classifier", "etf_seed", "etf_bias")}
    with torch.device("meta"):
        return build(network, num_classes, in_channels, image_size, width, **build_kwargs).feature_dim


def parameter_count(model: nn.Module) -> int:
    """Number of parameter scalars in the model (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
