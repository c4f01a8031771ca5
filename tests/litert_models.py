"""Small torch models, one per family of the validation zoo, for the litert compiler tests.

Used until (and alongside) hwlat.zoo: each reproduces the ops and patterns of its family
(inverted residuals, squeeze-excite, channel shuffle, fire modules, ceil-mode pooling, ...)
at a size that compiles and runs in well under a second.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin, cout, k=3, s=1, g=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SE(nn.Module):
    def __init__(self, c, m, gate=nn.Hardsigmoid):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, m, 1), nn.Conv2d(m, c, 1)
        self.act, self.gate = nn.ReLU(), gate()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, s, e, act=nn.ReLU6, se=False):
        super().__init__()
        mid = cin * e
        layers = [conv_bn(cin, mid, 1, act=act)] if e != 1 else []
        layers.append(conv_bn(mid, mid, k, s, g=mid, act=act))
        if se:
            layers.append(SE(mid, max(8, mid // 4)))
        layers.append(conv_bn(mid, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


class Head(nn.Module):
    def __init__(self, cin, n=10, hidden=None, act=nn.ReLU):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        fc = [nn.Linear(cin, hidden), act(), nn.Dropout(0.2), nn.Linear(hidden, n)] if hidden else [nn.Linear(cin, n)]
        self.fc = nn.Sequential(*fc)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


def mobilenet_v2():
    return nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.ReLU6), InvertedResidual(16, 16, 3, 1, 1),
                         InvertedResidual(16, 24, 3, 2, 6), InvertedResidual(24, 24, 3, 1, 6),
                         InvertedResidual(24, 32, 3, 2, 6), conv_bn(32, 128, 1, act=nn.ReLU6), Head(128))


def mobilenet_v3(ks=(3, 5, 7)):
    hs = nn.Hardswish
    return nn.Sequential(conv_bn(3, 16, 3, 2, act=hs), InvertedResidual(16, 16, ks[0], 1, 1, nn.ReLU, se=True),
                         InvertedResidual(16, 24, ks[1], 2, 4, nn.ReLU), InvertedResidual(24, 24, ks[2], 1, 3, hs, se=True),
                         InvertedResidual(24, 40, ks[0], 2, 6, hs, se=True), conv_bn(40, 96, 1, act=hs),
                         Head(96, hidden=128, act=hs))


def mnasnet():
    return nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 16, 3, 1, g=16), conv_bn(16, 8, 1, act=None),
                         InvertedResidual(8, 16, 3, 2, 3, nn.ReLU), InvertedResidual(16, 16, 5, 1, 6, nn.ReLU),
                         InvertedResidual(16, 24, 5, 2, 6, nn.ReLU), conv_bn(24, 96, 1), Head(96))


def channel_shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        half = cout // 2
        self.s = s
        if s > 1:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, s, g=cin, act=None), conv_bn(cin, half, 1))
        right_in = cin if s > 1 else half
        self.right = nn.Sequential(conv_bn(right_in, half, 1), conv_bn(half, half, 3, s, g=half, act=None),
                                   conv_bn(half, half, 1))

    def forward(self, x):
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), 1)
        else:
            out = torch.cat((self.left(x), self.right(x)), 1)
        return channel_shuffle(out, 2)


def shufflenet_v2():
    return nn.Sequential(conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1), ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1),
                         ShuffleUnit(48, 96, 2), conv_bn(96, 256, 1), Head(256))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.c1, self.c2 = conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, 1, act=None)
        self.down = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.c2(self.c1(x)) + self.down(x))


def resnet():
    return nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                         BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2), Head(64))


class Fire(nn.Module):
    def __init__(self, cin, sq, ex):
        super().__init__()
        self.sq = nn.Sequential(nn.Conv2d(cin, sq, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(sq, ex, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(sq, ex, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.sq(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet():
    return nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 8, 16),
                         Fire(32, 8, 16), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 16, 32),
                         nn.Dropout(0.5), nn.Conv2d(64, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def vgg():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10))


class FBNetBlock(nn.Module):
    """FBNet k*_e*_g2: grouped 1x1 convs with a channel shuffle between them."""

    def __init__(self, c, k, e, g):
        super().__init__()
        mid = c * e
        self.g = g
        self.pw1 = conv_bn(c, mid, 1, g=g)
        self.dw = conv_bn(mid, mid, k, 1, g=mid, act=None)
        self.pw2 = conv_bn(mid, c, 1, g=g, act=None)

    def forward(self, x):
        y = self.pw1(x)
        if self.g > 1:
            y = channel_shuffle(y, self.g)
        return x + self.pw2(self.dw(y))


def fbnet():
    return nn.Sequential(conv_bn(3, 16, 3, 2), FBNetBlock(16, 3, 1, 2), FBNetBlock(16, 5, 3, 1),
                         FBNetBlock(16, 3, 6, 2), Head(16))


class NB201Cell(nn.Module):
    """NAS-Bench-201 cell edges: ReLU-Conv-BN 1x1/3x3, avg-pool 3x3 (count_include_pad=False), skip."""

    def __init__(self, c):
        super().__init__()
        rcb = lambda k: nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, 1, k // 2, bias=False), nn.BatchNorm2d(c))
        self.e10, self.e20, self.e21 = rcb(3), rcb(1), nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.e30, self.e32 = rcb(3), nn.Identity()

    def forward(self, x):
        n1 = self.e10(x)
        n2 = self.e20(x) + self.e21(n1)
        return self.e30(x) + self.e32(n2)


def nasbench201():
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), NB201Cell(16),
                         nn.BatchNorm2d(16), nn.ReLU(), Head(16))


def silu_net():
    return nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.SiLU), InvertedResidual(16, 24, 3, 2, 4, nn.SiLU, se=True),
                         Head(24))


FAMILIES = {
    "mobilenet_v2": (mobilenet_v2, 64), "mobilenet_v3": (mobilenet_v3, 64), "mnasnet": (mnasnet, 64),
    "shufflenet_v2": (shufflenet_v2, 64), "resnet": (resnet, 64), "squeezenet": (squeezenet, 64),
    "vgg": (vgg, 64), "ofa_mbv3": (lambda: mobilenet_v3((7, 5, 3)), 72), "fbnet": (fbnet, 64),
    "nasbench201": (nasbench201, 32), "silu": (silu_net, 64),
}


def export(name: str, path=None, seed: int = 0):
    """The family model as an ONNX ModelProto (legacy exporter, opset 17), weights and BN stats random."""
    from hwlat.ir import torch_to_onnx

    fn, res = FAMILIES[name]
    torch.manual_seed(seed)
    m = fn()
    for mod in m.modules():   # non-trivial BN statistics so folding is really exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return torch_to_onnx(m.eval(), (1, 3, res, res), path)
