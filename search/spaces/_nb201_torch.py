"""Torch modules of the NAS-Bench-201 CIFAR network (imported only when a model is built)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import finish


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's reduction block: two ReLU-conv-BN, shortcut avgpool 2x2 + conv1x1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def _edge_op(op: int, c: int) -> nn.Module:
    if op == 1:
        return nn.Identity()
    if op == 2:
        return ReLUConvBN(c, c, 1, 1)
    if op == 3:
        return ReLUConvBN(c, c, 3, 1)
    if op == 4:
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise ValueError(f"edge op {op} has no module")


class Cell(nn.Module):
    """node_j = sum of op(node_i) over its live incoming edges; the output is node 3."""

    EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))

    def __init__(self, ops: list[int], live: list[bool], c: int):
        super().__init__()
        self.edges = [(k, dst, src) for k, (dst, src) in enumerate(self.EDGES) if live[k]]
        self.ops = nn.ModuleDict({str(k): _edge_op(ops[k], c) for k, _, _ in self.edges})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.edges:
            return x * 0.0
        nodes: dict[int, torch.Tensor] = {0: x}
        for k, dst, src in self.edges:
            y = self.ops[str(k)](nodes[src])
            nodes[dst] = y if dst not in nodes else nodes[dst] + y
        return nodes[3]


def build_nb201(ops: list[int], live: list[bool], channels=(16, 32, 64), cells: int = 5,
                num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0])]
    for s, c in enumerate(channels):
        if s > 0:
            layers.append(ResNetBasicBlock(channels[s - 1], c))
        layers += [Cell(ops, live, c) for _ in range(cells)]
    layers += [nn.BatchNorm2d(channels[-1]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
               nn.Linear(channels[-1], num_classes)]
    return finish(nn.Sequential(*layers))
