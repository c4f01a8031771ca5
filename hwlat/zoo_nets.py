"""Plain-torch definitions of the validation zoo's model families (random init, eval mode).

Layer recipes follow the published architectures (the torchvision / paper definitions), rewritten
with the shared blocks of ``hwlat.search.spaces.blocks`` so every model exports to standard ONNX
ops with static shapes. Deliberate departures, all for export or speed: VGG11 pools globally
before its classifier (so its FC sizes do not depend on resolution), MnasNet/ShuffleNet pool with
``AdaptiveAvgPool2d`` instead of ``mean``, channel splits use fixed sizes (ONNX Split), and the
DenseNet-style nets are post-activation (every BatchNorm folds into a conv).

Imported only by :mod:`hwlat.zoo` when a model is built (torch is heavy).
"""

from __future__ import annotations

import torch
from torch import nn

from hwlat.search.spaces.blocks import (ChannelShuffle, Classifier, ConvBNAct, MBConv, SqueezeExcite,
                                        finish, make_divisible)


# -- MobileNetV2 (Sandler et al. 2018) --------------------------------------------------------
def mobilenet_v2(width: float = 1.0) -> nn.Module:
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    cin = make_divisible(32 * width)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act="relu6")]
    for t, c, n, s in settings:
        cout = make_divisible(c * width)
        for i in range(n):
            layers.append(MBConv(cin, cout, 3, s if i == 0 else 1, int(round(cin * t)), act="relu6", expand=t != 1))
            cin = cout
    last = make_divisible(1280 * max(1.0, width))
    layers.append(ConvBNAct(cin, last, 1, act="relu6"))
    return finish(nn.Sequential(*layers, Classifier(last, 1000)))


# -- MobileNetV3 (Howard et al. 2019) ---------------------------------------------------------
_V3_LARGE = [  # k, expanded, out, SE, act, stride
    (3, 16, 16, 0, "relu", 1), (3, 64, 24, 0, "relu", 2), (3, 72, 24, 0, "relu", 1),
    (5, 72, 40, 1, "relu", 2), (5, 120, 40, 1, "relu", 1), (5, 120, 40, 1, "relu", 1),
    (3, 240, 80, 0, "hswish", 2), (3, 200, 80, 0, "hswish", 1), (3, 184, 80, 0, "hswish", 1),
    (3, 184, 80, 0, "hswish", 1), (3, 480, 112, 1, "hswish", 1), (3, 672, 112, 1, "hswish", 1),
    (5, 672, 160, 1, "hswish", 2), (5, 960, 160, 1, "hswish", 1), (5, 960, 160, 1, "hswish", 1),
]
_V3_SMALL = [
    (3, 16, 16, 1, "relu", 2), (3, 72, 24, 0, "relu", 2), (3, 88, 24, 0, "relu", 1),
    (5, 96, 40, 1, "hswish", 2), (5, 240, 40, 1, "hswish", 1), (5, 240, 40, 1, "hswish", 1),
    (5, 120, 48, 1, "hswish", 1), (5, 144, 48, 1, "hswish", 1), (5, 288, 96, 1, "hswish", 2),
    (5, 576, 96, 1, "hswish", 1), (5, 576, 96, 1, "hswish", 1),
]


def mobilenet_v3(variant: str = "large", width: float = 1.0) -> nn.Module:
    cfg, last = (_V3_LARGE, 1280) if variant == "large" else (_V3_SMALL, 1024)
    cin = make_divisible(16 * width)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act="hswish")]
    for k, exp, out, se, act, s in cfg:
        mid, cout = make_divisible(exp * width), make_divisible(out * width)
        layers.append(MBConv(cin, cout, k, s, mid, act=act, se_mid=make_divisible(mid // 4) if se else 0,
                             se_act="relu", se_gate="hsigmoid", expand=mid != cin))
        cin = cout
    feat = 6 * cin
    layers.append(ConvBNAct(cin, feat, 1, act="hswish"))
    hidden = make_divisible(last * width)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(feat, hidden), nn.Hardswish(),
                         nn.Linear(hidden, 1000))
    return finish(nn.Sequential(*layers, head))


# -- MnasNet-B1 (torchvision's MNASNet, Tan et al. 2019) -----------------------------------
def mnasnet(alpha: float = 1.0) -> nn.Module:
    d = [make_divisible(c * alpha) for c in (32, 16, 24, 40, 80, 96, 192, 320)]
    layers: list[nn.Module] = [ConvBNAct(3, d[0], 3, 2), ConvBNAct(d[0], d[0], 3, 1, groups=d[0]),
                               ConvBNAct(d[0], d[1], 1, act=None)]
    cin = d[1]
    for cout, k, s, e, n in ((d[2], 3, 2, 3, 3), (d[3], 5, 2, 3, 3), (d[4], 5, 2, 6, 3), (d[5], 3, 1, 6, 2),
                             (d[6], 5, 2, 6, 4), (d[7], 3, 1, 6, 1)):
        for i in range(n):
            layers.append(MBConv(cin, cout, k, s if i == 0 else 1, cin * e, act="relu"))
            cin = cout
    layers.append(ConvBNAct(cin, 1280, 1))
    return finish(nn.Sequential(*layers, Classifier(1280, 1000)))


# -- ShuffleNetV2 (Ma et al. 2018) ------------------------------------------------------------
class _ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride, self.cin = stride, cin
        if stride > 1:
            self.branch1 = nn.Sequential(ConvBNAct(cin, cin, 3, stride, groups=cin, act=None),
                                         ConvBNAct(cin, half, 1))
        b2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(ConvBNAct(b2_in, half, 1), ConvBNAct(half, half, 3, stride, groups=half, act=None),
                                     ConvBNAct(half, half, 1))
        self.shuffle = ChannelShuffle(cout, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.split([self.cin // 2, self.cin // 2], dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return self.shuffle(out)


def shufflenet_v2(width: float = 1.0) -> nn.Module:
    chans = {0.5: (48, 96, 192), 1.0: (116, 232, 464), 1.5: (176, 352, 704), 2.0: (244, 488, 976)}[width]
    last = 2048 if width == 2.0 else 1024
    layers: list[nn.Module] = [ConvBNAct(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for cout, repeats in zip(chans, (4, 8, 4)):
        for i in range(repeats):
            layers.append(_ShuffleUnit(cin, cout, 2 if i == 0 else 1))
            cin = cout
    layers.append(ConvBNAct(cin, last, 1))
    return finish(nn.Sequential(*layers, Classifier(last, 1000)))


# -- ResNet (He et al. 2016) -------------------------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(cin, cout, 3, stride), ConvBNAct(cout, cout, 3, 1, act=None))
        self.down = ConvBNAct(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


def resnet(depth: int = 18) -> nn.Module:
    repeats = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    layers: list[nn.Module] = [ConvBNAct(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (cout, n) in enumerate(zip((64, 128, 256, 512), repeats)):
        for i in range(n):
            layers.append(_BasicBlock(cin, cout, 2 if i == 0 and stage > 0 else 1))
            cin = cout
    return finish(nn.Sequential(*layers, Classifier(512, 1000)))


# -- SqueezeNet (Iandola et al. 2016) ----------------------------------------------------------
class _Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], dim=1)


def squeezenet(version: str = "1.1") -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    if version == "1.0":
        layers = [nn.Conv2d(3, 96, 7, 2), nn.ReLU(), pool(), _Fire(96, 16, 64, 64), _Fire(128, 16, 64, 64),
                  _Fire(128, 32, 128, 128), pool(), _Fire(256, 32, 128, 128), _Fire(256, 48, 192, 192),
                  _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256), pool(), _Fire(512, 64, 256, 256)]
    else:
        layers = [nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), pool(),
                  _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), pool(), _Fire(256, 48, 192, 192),
                  _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256)]
    head = [nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return finish(nn.Sequential(*layers, *head))


# -- VGG11 (Simonyan & Zisserman 2015), globally pooled head -----------------------------------
def vgg11() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 4096),
            nn.ReLU(), nn.Linear(4096, 1000)]
    return finish(nn.Sequential(*layers, *head))


# -- EfficientNet-B0 (Tan & Le 2019) -----------------------------------------------------------
def efficientnet_b0(width: float = 1.0) -> nn.Module:
    settings = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    cin = make_divisible(32 * width)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act="silu")]
    for e, k, s, c, n in settings:
        cout = make_divisible(c * width)
        for i in range(n):
            layers.append(MBConv(cin, cout, k, s if i == 0 else 1, make_divisible(cin * e), act="silu",
                                 se_mid=max(1, cin // 4), se_act="silu", se_gate="sigmoid", expand=e != 1))
            cin = cout
    last = make_divisible(1280 * width)
    layers.append(ConvBNAct(cin, last, 1, act="silu"))
    return finish(nn.Sequential(*layers, Classifier(last, 1000)))


# -- GhostNet (Han et al. 2020) ----------------------------------------------------------------
class _Ghost(nn.Module):
    """Half the channels from a 1x1 conv, half from a cheap depthwise 3x3 on those; concat."""

    def __init__(self, cin: int, cout: int, relu: bool):
        super().__init__()
        init = cout // 2    # cout is a multiple of 4: no slicing needed after the concat
        act = "relu" if relu else None
        self.primary = ConvBNAct(cin, init, 1, act=act)
        self.cheap = ConvBNAct(init, cout - init, 3, 1, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)


class _GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, se: bool):
        super().__init__()
        layers: list[nn.Module] = [_Ghost(cin, mid, relu=True)]
        if stride > 1:
            layers.append(ConvBNAct(mid, mid, k, stride, groups=mid, act=None))
        if se:
            layers.append(SqueezeExcite(mid, make_divisible(mid * 0.25, 4), "relu", "hsigmoid"))
        layers.append(_Ghost(mid, cout, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(ConvBNAct(cin, cin, k, stride, groups=cin, act=None),
                                          ConvBNAct(cin, cout, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


_GHOST_CFG = [  # k, expanded, out, SE, stride
    (3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2), (5, 120, 40, 1, 1),
    (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 1, 1),
    (3, 672, 112, 1, 1), (5, 672, 160, 1, 2), (5, 960, 160, 0, 1), (5, 960, 160, 1, 1), (5, 960, 160, 0, 1),
    (5, 960, 160, 1, 1),
]


def ghostnet(width: float = 1.0) -> nn.Module:
    cin = make_divisible(16 * width, 4)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2)]
    for k, exp, out, se, s in _GHOST_CFG:
        cout = make_divisible(out * width, 4)
        layers.append(_GhostBottleneck(cin, make_divisible(exp * width, 4), cout, k, s, bool(se)))
        cin = cout
    feat = make_divisible(960 * width, 4)
    layers.append(ConvBNAct(cin, feat, 1))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(feat, 1280, 1), nn.ReLU(), nn.Flatten(1),
                         nn.Linear(1280, 1000))
    return finish(nn.Sequential(*layers, head))


# -- DenseNet-BC style (Huang et al. 2017), small, post-activation -----------------------------
# DenseNet proper puts BN-ReLU before each conv, on a concat: a standalone BatchNormalization no
# runtime folds. The zoo uses conv-BN-ReLU instead (same concat pattern, same conv shapes), so
# every BN folds into its conv like in the other families.
class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(cin, 4 * growth, 1), ConvBNAct(4 * growth, growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def densenet(growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16)) -> nn.Module:
    cin = 2 * growth
    layers: list[nn.Module] = [ConvBNAct(3, cin, 7, 2), nn.MaxPool2d(3, 2, 1)]
    for b, n in enumerate(blocks):
        for _ in range(n):
            layers.append(_DenseLayer(cin, growth))
            cin += growth
        if b < len(blocks) - 1:
            layers += [ConvBNAct(cin, cin // 2, 1), nn.AvgPool2d(2, 2)]
            cin //= 2
    return finish(nn.Sequential(*layers, Classifier(cin, 1000)))
