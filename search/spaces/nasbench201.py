"""``nasbench201``: the NAS-Bench-201 cell space (Dong & Yang, ICLR 2020).

A cell is a DAG of 4 nodes; each of its 6 edges (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2, the order of
the usual string) carries one of 5 ops. The CIFAR skeleton: conv3x3 (16 ch) + BN, three stages
of 5 cells (16, 32, 64 channels) joined by ResNet basic blocks of stride 2, then BN + ReLU, global
average pool and a 10-way linear layer; input 32x32.

The built model leaves out what contributes nothing: 'none' edges and edges whose result never
reaches the cell output (the network computes the same function; a cell whose output is cut off
from its input entirely outputs ``x * 0``).

``all()`` lists the 15,625 cells in the benchmark's own index order (the lexicographic
enumeration shuffled with Python's ``random.seed(88)``, as NAS-Bench-201 generated it), so
``all()[i]`` is architecture index ``i`` of the benchmark and of its published latency tables.

Integer row (6 columns): the op index of each edge in :data:`OPS` order.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from hwlat.errors import HwlatError

from .base import Space, register, remember_rows, rows_of

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))   # (to, from), in string order
N_EDGES = len(EDGES)
CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5
NUM_CLASSES = 10
_OP_INDEX = {op: i for i, op in enumerate(OPS)}


@dataclass(frozen=True)
class NB201Arch:
    ops: tuple[str, ...]


def arch_string(ops: Sequence[str]) -> str:
    e = [f"{op}~{src}" for op, (_, src) in zip(ops, EDGES)]
    return f"|{e[0]}|+|{e[1]}|{e[2]}|+|{e[3]}|{e[4]}|{e[5]}|"


@lru_cache(maxsize=1)
def _benchmark_order() -> tuple[np.ndarray, np.ndarray]:
    """(codes in benchmark index order, index of each code): code = base-5 number of the ops."""
    codes = list(range(len(OPS) ** N_EDGES))     # lexicographic, first edge most significant
    random.Random(88).shuffle(codes)              # NAS-Bench-201's generate_meta_info
    order = np.array(codes, dtype=np.int64)
    index = np.empty_like(order)
    index[order] = np.arange(len(order))
    return order, index


_POW5 = (len(OPS) ** np.arange(N_EDGES - 1, -1, -1)).astype(np.int64)


def _live_edges(ops_idx: Sequence[int]) -> list[bool]:
    """Which edges feed the cell output along a path that starts at the cell input."""
    real = [op != 0 for op in ops_idx]
    reach_in = {0}
    for k, (dst, src) in enumerate(EDGES):      # edges are in topological order of dst
        if real[k] and src in reach_in:
            reach_in.add(dst)
    reach_out = {3}
    for k in reversed(range(N_EDGES)):
        dst, src = EDGES[k]
        if real[k] and dst in reach_out:
            reach_out.add(src)
    return [real[k] and src in reach_in and dst in reach_out for k, (dst, src) in enumerate(EDGES)]


@lru_cache(maxsize=1)
def _feature_table() -> np.ndarray:
    """Features of every cell, indexed by code: one-hot per edge + counts of live ops by type."""
    table = np.zeros((len(OPS) ** N_EDGES, N_EDGES * len(OPS) + len(OPS) + 1), np.float32)
    for code, ops_idx in enumerate(itertools.product(range(len(OPS)), repeat=N_EDGES)):
        row = table[code]
        for k, op in enumerate(ops_idx):
            row[k * len(OPS) + op] = 1.0
        live = _live_edges(ops_idx)
        for k, op in enumerate(ops_idx):
            if live[k]:
                row[N_EDGES * len(OPS) + op] += 1.0
        row[-1] = float(any(live))               # 0: the cell output is cut off from its input
    return table


@register("nasbench201")
class NASBench201Space(Space):
    name = "nasbench201"
    arch_type = NB201Arch

    def choices(self) -> dict:
        return {"ops": list(OPS), "edges": [f"{d}<-{s}" for d, s in EDGES], "size": len(OPS) ** N_EDGES,
                "channels": list(CHANNELS), "cells_per_stage": CELLS_PER_STAGE, "resolution": 32}

    def parse(self, spec: Any) -> NB201Arch:
        if isinstance(spec, NB201Arch):
            ops = spec.ops
        elif isinstance(spec, str):
            ops = self._parse_string(spec.strip())
        elif isinstance(spec, (list, tuple)):
            ops = tuple(spec)
        else:
            raise HwlatError(f"nasbench201: expected an arch string '|op~0|+|op~0|op~1|+|...|' or a list of "
                             f"6 op names, got {type(spec).__name__}")
        if len(ops) != N_EDGES:
            raise HwlatError(f"nasbench201: field 'ops': expected {N_EDGES} edge ops, got {len(ops)}")
        for k, op in enumerate(ops):
            if op not in _OP_INDEX:
                raise HwlatError(f"nasbench201: field 'ops': edge {k} op {op!r} not in {', '.join(OPS)}")
        return NB201Arch(tuple(str(op) for op in ops))

    @staticmethod
    def _parse_string(text: str) -> tuple[str, ...]:
        nodes = text.split("+")
        if len(nodes) != 3:
            raise HwlatError(f"nasbench201: arch string needs 3 nodes separated by '+', got {text!r}")
        ops: list[str] = []
        for node, inputs in zip(nodes, (1, 2, 3)):
            parts = [p for p in node.strip().strip("|").split("|") if p]
            if len(parts) != inputs:
                raise HwlatError(f"nasbench201: node {inputs} needs {inputs} inputs, got {node!r}")
            for j, p in enumerate(parts):
                op, _, src = p.partition("~")
                if src != str(j):
                    raise HwlatError(f"nasbench201: node {inputs} input {j} must read '~{j}', got {p!r}")
                ops.append(op)
        return tuple(ops)

    def key(self, arch: NB201Arch) -> str:
        return arch_string(self.parse(arch).ops)

    # -- the whole benchmark ------------------------------------------------------------------
    def all(self) -> list[NB201Arch]:
        """All 15,625 cells in NAS-Bench-201's index order."""
        order, _ = _benchmark_order()
        return self.from_matrix(self._codes_to_matrix(order))

    def index(self, archs) -> np.ndarray | int:
        """NAS-Bench-201 index of an architecture (or of each in a list / int matrix)."""
        single = not isinstance(archs, (list, tuple, np.ndarray))
        m = archs if isinstance(archs, np.ndarray) else self.to_matrix(self._parsed([archs] if single else archs))
        idx = _benchmark_order()[1][self._codes(m)]
        return int(idx[0]) if single else idx

    @staticmethod
    def _codes(m: np.ndarray) -> np.ndarray:
        return np.asarray(m, dtype=np.int64) @ _POW5

    @staticmethod
    def _codes_to_matrix(codes: np.ndarray) -> np.ndarray:
        return ((np.asarray(codes)[:, None] // _POW5[None, :]) % len(OPS)).astype(np.int16)

    # -- integer rows -------------------------------------------------------------------------
    def gene_choices(self) -> list[np.ndarray]:
        return [np.arange(len(OPS))] * N_EDGES

    def to_matrix(self, archs: Sequence[NB201Arch]) -> np.ndarray:
        return rows_of(archs, lambda a: [_OP_INDEX[o] for o in a.ops], N_EDGES)

    def from_matrix(self, m: np.ndarray) -> list[NB201Arch]:
        m = np.asarray(m)
        return remember_rows([NB201Arch(tuple(OPS[i] for i in row)) for row in m.tolist()], m)

    # -- features -----------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return ([f"e{k}_{op}" for k in range(N_EDGES) for op in OPS] + [f"live_{op}" for op in OPS]
                + ["connected"])

    def encode_matrix(self, m: np.ndarray) -> np.ndarray:
        return _feature_table()[self._codes(m)]

    # -- models -------------------------------------------------------------------------------
    def input_shape(self, arch: NB201Arch) -> tuple[int, int, int, int]:
        return (1, 3, 32, 32)

    def build(self, arch: NB201Arch):
        from ._nb201_torch import build_nb201

        a = self.parse(arch)
        return build_nb201([_OP_INDEX[o] for o in a.ops], _live_edges([_OP_INDEX[o] for o in a.ops]))
