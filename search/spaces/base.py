"""The search-space interface and the registry behind ``spaces.get(name)``.

A space owns its architectures (frozen, hashable dataclasses), their canonical key strings, a
numeric encoding for the latency/accuracy predictors, the genetic operators a search needs, and a
builder of real random-init torch models. Every architecture also maps to a row of small integers
(``to_matrix``): encoding, sampling and mutation at scale work on those matrices with numpy, so a
search can score hundreds of thousands of candidates a second.

torch is imported only inside ``build`` so that encoding and prediction stay light.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hwlat.errors import HwlatError

_REGISTRY: dict[str, Callable[..., "Space"]] = {}


def register(name: str) -> Callable:
    """Class decorator: make a space constructible by name through :func:`get`."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"search space '{name}' registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> "Space":
    """A space by its registered name; keyword options go to the space's constructor."""
    if isinstance(name, Space):
        return name
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise HwlatError(f"unknown search space '{name}': choose one of {', '.join(names())}") from None
    return factory(**options)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without going below 90% (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class Space(abc.ABC):
    """A search space. Subclasses set ``name`` and implement the abstract methods.

    Contract:
      * ``parse(spec)`` accepts an architecture of this space, its key string, or the space's
        native form; anything else raises :class:`HwlatError` naming the bad field.
      * ``key(arch)`` is canonical and stable: ``parse(key(a)) == a``.
      * ``sample(n, seed)`` is uniform over the choices and deterministic for a seed.
      * ``build(arch)`` returns a random-init torch model in eval mode whose forward works on
        ``torch.randn(input_shape(arch))`` and exports to ONNX (opset 17, static shapes).
      * ``to_matrix(archs)`` / ``from_matrix(m)`` map architectures to rows of small integers
        and back; ``encode`` turns either into float32 features, vectorised.
    """

    name: str = ""

    # -- identity ---------------------------------------------------------------------------
    @abc.abstractmethod
    def parse(self, spec: Any): ...

    @abc.abstractmethod
    def key(self, arch) -> str: ...

    def keys(self, archs: Iterable) -> list[str]:
        return [self.key(a) for a in archs]

    @abc.abstractmethod
    def choices(self) -> dict:
        """A JSON-able description of the choices (for docs and the CLI)."""

    # -- integer rows -----------------------------------------------------------------------
    @abc.abstractmethod
    def to_matrix(self, archs: Sequence) -> np.ndarray:
        """Architectures -> int matrix (one row each); the inverse of :meth:`from_matrix`."""

    @abc.abstractmethod
    def from_matrix(self, m: np.ndarray) -> list: ...

    @abc.abstractmethod
    def gene_choices(self) -> list[np.ndarray]:
        """The allowed integer values of each matrix column (what sampling and mutation draw from)."""

    def repair_matrix(self, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Make rows canonical after sampling, mutation or crossover (default: nothing to do)."""
        return m

    def sample_matrix(self, n: int, seed: Any = 0) -> np.ndarray:
        """``n`` random architectures as integer rows: each column uniform over its choices."""
        rng = as_rng(seed)
        cols = [rng.choice(np.asarray(c), int(n)) for c in self.gene_choices()]
        m = np.stack(cols, axis=1).astype(np.int16) if n else np.zeros((0, len(cols)), np.int16)
        return self.repair_matrix(m, rng)

    def sample(self, n: int, seed: Any = 0) -> list:
        """``n`` random architectures, deterministic for a seed (an int or a numpy Generator)."""
        return self.from_matrix(self.sample_matrix(n, seed))

    def calibration_sample(self, n: int, seed: Any = 0) -> list:
        """Architectures to calibrate a device's whole-model correction on (default: ``sample``);
        a space whose networks differ widely in size spreads them over that range instead."""
        return self.sample(n, seed)

    # -- features ---------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_matrix(self, m: np.ndarray) -> np.ndarray:
        """Integer rows -> float32 features, shape (len(m), F), pure numpy."""

    def encode(self, archs) -> np.ndarray:
        """Float32 features of architectures (a list of archs, or an int matrix from ``to_matrix``)."""
        m = archs if isinstance(archs, np.ndarray) else self.to_matrix(self._parsed(archs))
        return self.encode_matrix(np.asarray(m))

    def feature_names(self) -> list[str]:
        return [f"f{i}" for i in range(self.encode_matrix(self.sample_matrix(1)).shape[1])]

    # -- models -----------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, arch):
        """A real random-init ``torch.nn.Module`` in eval mode."""

    @abc.abstractmethod
    def input_shape(self, arch) -> tuple[int, int, int, int]: ...

    # -- genetic operators ------------------------------------------------------------------
    def mutate_matrix(self, m: np.ndarray, rng: Any, prob: float = 0.1) -> np.ndarray:
        """Each gene of each row is redrawn from its choices with probability ``prob``."""
        rng = as_rng(rng)
        m = np.array(m, dtype=np.int16, copy=True)
        for j, ch in enumerate(self.gene_choices()):
            hit = rng.random(len(m)) < prob
            if hit.any():
                m[hit, j] = rng.choice(np.asarray(ch), int(hit.sum()))
        return self.repair_matrix(m, rng)

    def crossover_matrix(self, a: np.ndarray, b: np.ndarray, rng: Any) -> np.ndarray:
        """Uniform crossover: each gene from either parent with equal chance."""
        rng = as_rng(rng)
        a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        return self.repair_matrix(np.where(rng.random(a.shape) < 0.5, a, b), rng)

    def mutate(self, arch, rng: Any, prob: float = 0.1):
        return self.from_matrix(self.mutate_matrix(self.to_matrix([self.parse(arch)]), rng, prob))[0]

    def crossover(self, a, b, rng: Any):
        ma, mb = self.to_matrix([self.parse(a)]), self.to_matrix([self.parse(b)])
        return self.from_matrix(self.crossover_matrix(ma, mb, rng))[0]

    # -- helpers ----------------------------------------------------------------------------
    def _parsed(self, archs: Iterable) -> list:
        arch_type = getattr(self, "arch_type", None)
        return [a if arch_type is not None and type(a) is arch_type else self.parse(a) for a in archs]

    def __repr__(self) -> str:
        return f"<search space {self.name}>"


def rows_of(archs: Sequence, row_fn: Callable, ncols: int) -> np.ndarray:
    """Stack the integer rows of architectures, memoised on each (frozen) arch object.

    The memo turns ``to_matrix`` on archs that came out of ``from_matrix``/``sample`` into one
    bytes join, which is what keeps ``encode(list_of_archs)`` at hundreds of thousands a second.
    """
    parts = []
    for a in archs:
        b = a.__dict__.get("_row")
        if b is None:
            b = np.asarray(row_fn(a), dtype=np.int16).tobytes()
            object.__setattr__(a, "_row", b)
        parts.append(b)
    if not parts:
        return np.zeros((0, ncols), np.int16)
    return np.frombuffer(b"".join(parts), dtype=np.int16).reshape(len(parts), ncols).copy()


def remember_rows(archs: list, m: np.ndarray) -> list:
    m16 = np.ascontiguousarray(m, dtype=np.int16)
    for a, row in zip(archs, m16):
        object.__setattr__(a, "_row", row.tobytes())
    return archs


def int_list(value: Any, field: str, length: int) -> tuple[int, ...]:
    """A list of ``length`` ints from a sequence or a space/comma-separated string."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        out = tuple(as_int(v) for v in value)
    except (TypeError, ValueError):
        raise HwlatError(f"field '{field}': expected {length} integers, got {value!r}") from None
    if len(out) != length:
        raise HwlatError(f"field '{field}': expected {length} values, got {len(out)}")
    return out


def as_int(v: Any) -> int:
    """int(v) for ints, integral floats and digit strings; ValueError otherwise (no truncation)."""
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(v)
    f = float(v)
    if not f.is_integer():
        raise ValueError(v)
    return int(f)
