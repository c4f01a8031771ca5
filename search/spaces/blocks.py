"""Torch building blocks shared by the spaces and the validation zoo.

Every block exports to plain ONNX ops with static shapes: activations are ``nn.ReLU``,
``nn.Hardswish``, ``nn.Hardsigmoid``, ``nn.Sigmoid``, ``nn.SiLU`` (so HardSwish/HardSigmoid
appear as single ops), squeeze-excite pools with ``AdaptiveAvgPool2d(1)`` (GlobalAveragePool), and
channel shuffle / split use sizes fixed at construction (Reshape/Transpose/Split with constant
shapes, no Shape/Gather chains in the graph).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import make_divisible

_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def act_layer(name: str | None) -> nn.Module:
    if name in (None, "", "none", "linear"):
        return nn.Identity()
    return _ACTS[name]()


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation; 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", bn: bool = True, bias: bool = False):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias or not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        if act not in (None, "", "none", "linear"):
            layers.append(act_layer(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce -> act -> 1x1 expand -> gate -> multiply."""

    def __init__(self, c: int, mid: int, act: str = "relu", gate: str = "hsigmoid"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, mid, 1, bias=True)
        self.act = act_layer(act)
        self.expand = nn.Conv2d(mid, c, 1, bias=True)
        self.gate = act_layer(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle with the feature size fixed at build time (static Reshape)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channel shuffle: {channels} channels not divisible by {groups} groups")
        self.channels, self.groups = channels, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.reshape(b, self.groups, self.channels // self.groups, h, w).transpose(1, 2)
        return x.reshape(b, self.channels, h, w)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, act] -> [shuffle] -> dw kxk, act -> [SE] -> 1x1 project.

    ``expand_mid`` is the hidden width; ``expand=False`` drops the expansion conv (MobileNetV2's
    first block, OFA's first block). ``groups`` > 1 makes both 1x1 convs grouped (FBNet) and adds
    a channel shuffle after the expansion. The residual is added when stride is 1 and the shape
    is unchanged.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, mid: int, act: str = "relu",
                 se_mid: int = 0, se_act: str = "relu", se_gate: str = "hsigmoid",
                 groups: int = 1, expand: bool = True, dw_act: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        if expand:
            layers.append(ConvBNAct(cin, mid, 1, 1, groups=groups, act=act))
            if groups > 1:
                layers.append(ChannelShuffle(mid, groups))
        else:
            mid = cin
        layers.append(ConvBNAct(mid, mid, k, stride, groups=mid, act=act if dw_act else None))
        if se_mid:
            layers.append(SqueezeExcite(mid, se_mid, se_act, se_gate))
        layers.append(ConvBNAct(mid, cout, 1, 1, groups=groups, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class ResidualBlock(nn.Module):
    """ResNet blocks: two 3x3 convs (basic) or 1x1 to half the channels, 3x3, 1x1 back
    (``bottleneck``); the input added through a 1x1 projection where the shape changes; ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bottleneck: bool = False):
        super().__init__()
        if bottleneck:
            mid = cout // 2
            self.body = nn.Sequential(ConvBNAct(cin, mid, 1, 1, act="relu"), ConvBNAct(mid, mid, 3, stride, act="relu"),
                                      ConvBNAct(mid, cout, 1, 1, act=None))
        else:
            self.body = nn.Sequential(ConvBNAct(cin, cout, 3, stride, act="relu"), ConvBNAct(cout, cout, 3, 1, act=None))
        self.proj = ConvBNAct(cin, cout, 1, stride, act=None) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.proj(x))


class Classifier(nn.Module):
    """Global average pool -> flatten -> [dropout-free] linear."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class MobileHead(nn.Module):
    """MobileNetV3 head: global pool -> 1x1 conv (no BN) -> act -> flatten -> linear."""

    def __init__(self, cin: int, hidden: int, num_classes: int, act: str = "hswish"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(cin, hidden, 1, bias=True)
        self.act = act_layer(act)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.act(self.conv(self.pool(x))), 1))


def finish(model: nn.Module) -> nn.Module:
    """Eval mode, with BatchNorm parameters and statistics drawn at random.

    Default BatchNorm init (scale 1, shift 0, mean 0, var 1) makes every folded conv bias zero;
    the ONNX exporter then deduplicates those identical initialisers and inserts Identity nodes.
    Random BN values avoid that and look like a trained network to the runtime.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


__all__ = ["act_layer", "ConvBNAct", "SqueezeExcite", "ChannelShuffle", "MBConv", "ResidualBlock", "Classifier",
           "MobileHead", "finish", "make_divisible"]
