"""Layout bookkeeping for the ONNX (NCHW) -> TFLite (NHWC) compiler.

Every ONNX tensor is held in TFLite as ``onnx_tensor.transpose(perm)``: 4-D activations use
``NHWC = (0, 2, 3, 1)``, everything else starts as the identity. Reshapes and transposes keep a
permuted layout whenever the row-major element order allows it, so a channel shuffle compiles
to RESHAPE-TRANSPOSE-RESHAPE in NHWC (as a TensorFlow model would) instead of bouncing through
NCHW with extra transposes. Every layout chosen here is verified on an index tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NHWC = (0, 2, 3, 1)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def preferred(rank: int) -> tuple[int, ...]:
    return NHWC if rank == 4 else identity(rank)


def permute_shape(shape, perm) -> tuple[int, ...]:
    return tuple(int(shape[p]) for p in perm)


def transpose_between(perm_from, perm_to) -> tuple[int, ...]:
    """TFLite TRANSPOSE permutation taking layout ``perm_from`` to ``perm_to``."""
    return tuple(list(perm_from).index(a) for a in perm_to)


def tfl_axis(perm, onnx_axis: int) -> int:
    return list(perm).index(onnx_axis)


def _index_tensor(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(tuple(shape))


def _groups(a, b):
    """Pair up runs of non-unit dims of shapes ``a`` and ``b`` with equal products."""
    ia = [i for i, d in enumerate(a) if d != 1]
    ib = [i for i, d in enumerate(b) if d != 1]
    groups, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ga, gb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(ia):
                    return None
                ga.append(ia[i]); pa *= a[ia[i]]; i += 1
            else:
                if j >= len(ib):
                    return None
                gb.append(ib[j]); pb *= b[ib[j]]; j += 1
        groups.append((ga, gb))
    if i != len(ia) or j != len(ib):
        return None
    return groups


def _derived_layout(in_shape, out_shape, perm_in):
    """The output layout that keeps each merged/split group where the input layout had it."""
    groups = _groups(in_shape, out_shape)
    if groups is None:
        return None
    order = [p for p in perm_in if in_shape[p] != 1]
    out = []
    for ga, gb in groups:
        pos = [order.index(x) for x in ga]
        if pos != list(range(pos[0], pos[0] + len(pos))):
            return None
    first = {ga[0]: gb for ga, gb in groups}
    for ax in order:
        if ax in first:
            out += first[ax]
    units = [i for i, d in enumerate(out_shape) if d == 1]
    return tuple(units + out)


def reshape_layout(in_shape, out_shape, perm_in) -> tuple[int, ...] | None:
    """An output layout for which an ONNX Reshape is a plain TFLite RESHAPE of the permuted
    input, or None when no such layout exists (the input must be transposed first)."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    a = _index_tensor(in_shape)
    tfl_flat = a.transpose(perm_in).reshape(-1)
    onnx_out = a.reshape(out_shape)
    cands = [preferred(len(out_shape)), identity(len(out_shape))]
    d = _derived_layout(in_shape, out_shape, perm_in)
    if d is not None:
        cands.append(d)
    for q in cands:
        if np.array_equal(onnx_out.transpose(q).reshape(-1), tfl_flat):
            return q
    return None


def feature_permutation(in_shape, out_shape, perm_in) -> np.ndarray | None:
    """For a flatten to 2-D: ``idx`` with ``tflite_out[:, j] == onnx_out[:, idx[j]]``, so a
    following FULLY_CONNECTED can permute its weight columns instead of transposing activations."""
    if len(out_shape) != 2:
        return None
    a = _index_tensor(in_shape)
    onnx_out = a.reshape(out_shape)
    tfl = a.transpose(perm_in).reshape(out_shape)
    f = out_shape[1]
    idx = tfl[0] - onnx_out[0, 0]
    if idx.min() < 0 or idx.max() >= f or not np.array_equal(tfl, onnx_out[:, idx]):
        return None
    return idx


@dataclass
class Val:
    """An ONNX tensor held in TFLite as ``onnx_tensor.transpose(perm)``.

    ``fperm`` marks a flattened 2-D tensor whose features are in TFLite order (see
    :func:`feature_permutation`); ``nonneg`` marks values known to be >= 0 (after RELU/RELU6),
    where zero padding equals -inf padding for max pooling.
    """

    t: int
    perm: tuple
    fperm: np.ndarray | None = None
    nonneg: bool = False
