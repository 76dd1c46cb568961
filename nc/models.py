"""The paper's three network families (VGG, ResNet, DenseNet) for small images.

Papyan, Han & Donoho (2020) Section 2F: "We replaced the dropout layers in VGG with batch
normalization and set the dropout rate in DenseNet to zero"; DenseNet201/250 use the
memory-efficient implementation of Pleiss et al. (2017).

Every model returned by `build` is a `Network`: `model.features(x)` maps images (B, C, H, W) to
the last-layer features h (B, p) -- the input of the final linear layer, in the network's own
activation units -- and `model.classifier` is `nn.Linear(p, num_classes)` giving the logits
W h + b, so `model(x) == model.classifier(model.features(x))`. p is `model.feature_dim`.

Channel counts are the published ones scaled by `width` (max(1, round(c * width))), so small
widths give fast CPU models of the same depth. `image_size` only decides which down-sampling
pools are kept (a pool is dropped once the feature map is 1x1), so 16x16 and 28x28 inputs work.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# VGG conv configs (Simonyan & Zisserman 2015, configs A, B, D, E); "M" = 2x2 max-pool.
VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# ResNet (He et al. 2016) as in kuangliu/pytorch-cifar: (bottleneck?, blocks per stage).
RESNET_CONFIGS = {
    "resnet18": (False, [2, 2, 2, 2]),
    "resnet34": (False, [3, 4, 6, 3]),
    "resnet50": (True, [3, 4, 6, 3]),
    "resnet101": (True, [3, 4, 23, 3]),
    "resnet152": (True, [3, 8, 36, 3]),
}
RESNET_STAGE_CHANNELS = [64, 128, 256, 512]
# DenseNet-BC (Huang et al. 2017): depth -> default growth rate k. CIFAR-style 3 blocks of
# (depth - 4) // 6 layers, except densenet201: the ImageNet 4-block config with a small-image stem.
DENSENET_GROWTH_RATES = {"densenet40": 12, "densenet100": 12, "densenet201": 32, "densenet250": 24}
DENSENET201_BLOCKS = [6, 12, 48, 32]
DENSENET_DEFAULT_GROWTH_RATE = 12  # for any other 'densenet<depth>'

NETWORKS = [*VGG_CONFIGS, *RESNET_CONFIGS, *DENSENET_GROWTH_RATES]


def scaled(channels: int, width: float) -> int:
    """Channel count `channels` scaled by the width multiplier, at least 1."""
    return max(1, round(channels * width))


class Network(nn.Module):
    """features: images -> h (B, feature_dim); classifier: h -> logits (B, num_classes)."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x):
        return self.classifier(self.features(x))


def conv_bn_relu(in_channels, out_channels, kernel_size=3, stride=1, bias=False):
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=bias),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


# ---------------------------------------------------------------------------------------- VGG

def vgg(config, num_classes, in_channels, image_size, width):
    """VGG with BatchNorm after each conv; head (Linear + BatchNorm1d + ReLU) x 2 replaces dropout.

    The head is as wide as the last conv (512 x width, the CIFAR VGG) unless that is below C - 1, where the
    between-class covariance could not have rank C - 1; then it is ImageNet VGG's 4096 x width."""
    layers, channels, size = [], in_channels, image_size
    for item in config:
        if item == "M":
            if size > 1:  # pool only while there is something left to pool
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
        else:
            layers += conv_bn_relu(channels, scaled(item, width), bias=True)  # as kuangliu / torchvision
            channels = scaled(item, width)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head = channels if channels >= num_classes - 1 else max(scaled(4096, width), num_classes - 1)
    for _ in range(2):
        layers += [nn.Linear(channels, head), nn.BatchNorm1d(head), nn.ReLU(inplace=True)]
        channels = head
    return Network(nn.Sequential(*layers), head, num_classes)


# ------------------------------------------------------------------------------------- ResNet

class ResidualBlock(nn.Module):
    """relu(branch(x) + shortcut(x)); branch is BasicBlock (3x3, 3x3) or Bottleneck (1x1, 3x3, 1x1 x4)."""

    def __init__(self, in_channels, planes, stride, bottleneck):
        super().__init__()
        out_channels = planes * 4 if bottleneck else planes
        if bottleneck:
            branch = [*conv_bn_relu(in_channels, planes, 1), *conv_bn_relu(planes, planes, 3, stride),
                      nn.Conv2d(planes, out_channels, 1, bias=False)]
        else:
            branch = [*conv_bn_relu(in_channels, planes, 3, stride),
                      nn.Conv2d(planes, out_channels, 3, 1, 1, bias=False)]
        self.branch = nn.Sequential(*branch, nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return F.relu(self.branch(x) + self.shortcut(x))


def resnet(bottleneck, blocks_per_stage, num_classes, in_channels, width):
    """CIFAR ResNet (kuangliu/pytorch-cifar): 3x3 stem, stride 1, no max-pool, 4 stages, global avg pool."""
    stage_planes = [scaled(c, width) for c in RESNET_STAGE_CHANNELS]
    layers = conv_bn_relu(in_channels, stage_planes[0])
    channels = stage_planes[0]
    for stage, (planes, blocks) in enumerate(zip(stage_planes, blocks_per_stage)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(ResidualBlock(channels, planes, stride, bottleneck))
            channels = planes * 4 if bottleneck else planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Network(nn.Sequential(*layers), channels, num_classes)


# ----------------------------------------------------------------------------------- DenseNet

def batch_norm_without_update(bn: nn.BatchNorm2d, x):
    """`bn(x)` with momentum 0: the same computation and saved tensors, running stats left unchanged
    (the checkpoint recomputation must not update them a second time)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        bn.training or bn.running_mean is None, 0.0, bn.eps)


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k) on the concatenation of all earlier feature maps.

    memory_efficient: checkpoint concat-BN-ReLU-Conv1x1 (Pleiss et al. 2017), so the concatenation
    and its normalised copy are recomputed in backward instead of stored; same outputs, gradients
    and running statistics as the plain layer."""

    def __init__(self, in_channels, growth_rate, memory_efficient):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, 1, 1, bias=False)
        self.memory_efficient = memory_efficient

    def forward(self, features: list):
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad for f in features):
            calls = []

            def bottleneck(*features):  # first call: the forward (updates BN stats); later: recompute
                x = torch.cat(features, 1)
                x = batch_norm_without_update(self.norm1, x) if calls else self.norm1(x)
                calls.append(1)
                return self.conv1(F.relu(x))

            out = torch.utils.checkpoint.checkpoint(bottleneck, *features, use_reentrant=False)
        else:
            out = self.conv1(F.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(F.relu(self.norm2(out)))


class DenseBlock(nn.Module):
    """num_layers DenseLayers; output = concat(input, every layer's k new maps)."""

    def __init__(self, in_channels, num_layers, growth_rate, memory_efficient):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth_rate, growth_rate, memory_efficient)
                                    for i in range(num_layers))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def densenet(layers_per_block, growth_rate, num_classes, in_channels, image_size, width,
             memory_efficient):
    """DenseNet-BC, dropout 0: 3x3 stem conv (2k maps), dense blocks, transitions
    BN-ReLU-Conv1x1(compression 0.5)-AvgPool2 (pool dropped once the map is 1x1), BN-ReLU-global avg pool."""
    growth_rate = scaled(growth_rate, width)
    channels, size = 2 * growth_rate, image_size
    layers = [nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)]
    for block, num_layers in enumerate(layers_per_block):
        layers.append(DenseBlock(channels, num_layers, growth_rate, memory_efficient))
        channels += num_layers * growth_rate
        if block < len(layers_per_block) - 1:
            layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                       nn.Conv2d(channels, max(1, channels // 2), 1, bias=False)]
            channels = max(1, channels // 2)
            if size > 1:
                layers.append(nn.AvgPool2d(2))
                size //= 2
    layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Network(nn.Sequential(*layers), channels, num_classes)


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


def init_weights(model: nn.Module):
    """Kaiming-normal convs (fan_out, ReLU, as torchvision), conv bias 0, BN weight 1 bias 0; Linear default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build(network: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
          width: float = 1.0, memory_efficient: bool = False, growth_rate: int | None = None) -> nn.Module:
    """A freshly initialised `Network` by name (see NETWORKS; also any 'densenet<depth>' with
    (depth - 4) % 6 == 0). growth_rate overrides the DenseNet default k (before width scaling);
    memory_efficient applies to DenseNets only."""
    if num_classes < 1 or in_channels < 1 or image_size < 1 or not width > 0:
        raise ValueError(f"need num_classes, in_channels, image_size >= 1 and width > 0, got "
                         f"{num_classes=}, {in_channels=}, {image_size=}, {width=}")
    dense_blocks = densenet_layers_per_block(network)
    if growth_rate is not None and (dense_blocks is None or growth_rate < 1):
        raise ValueError(f"growth_rate={growth_rate} needs a DenseNet and a value >= 1 (network {network!r})")
    if network in VGG_CONFIGS:
        model = vgg(VGG_CONFIGS[network], num_classes, in_channels, image_size, width)
    elif network in RESNET_CONFIGS:
        model = resnet(*RESNET_CONFIGS[network], num_classes, in_channels, width)
    elif dense_blocks is not None:
        growth_rate = growth_rate or DENSENET_GROWTH_RATES.get(network, DENSENET_DEFAULT_GROWTH_RATE)
        model = densenet(dense_blocks, growth_rate, num_classes, in_channels, image_size, width,
                         memory_efficient)
    else:
        raise ValueError(f"unknown network {network!r}; known: {', '.join(NETWORKS)} "
                         f"(and 'densenet<depth>' for any depth with (depth - 4) % 6 == 0)")
    init_weights(model)
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of parameter scalars in the model (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
