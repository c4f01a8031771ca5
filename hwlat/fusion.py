"""Fusion rules as data.

A rule ``[chain, op]`` says: a kernel whose op chain so far is ``chain`` (e.g. ``conv-add``)
absorbs the next node when that node is ``op`` (e.g. ``relu``) and is the chain's only consumer.
``groups`` names structural patterns that run as one kernel (``se``: squeeze-excite from its
pooling to its gating multiply; ``shuffle``: reshape-transpose-reshape channel shuffle).
``unfused_operands`` lists ``[op, producer]`` pairs: ``op`` (e.g. ``add``) is not absorbed when its
other operand comes from ``producer`` (ORT fuses a residual add into its NCHWc convolution only
when the other operand is in the blocked layout too, which a concat's output is not); a third
element limits the pair to one chain (``[add, conv, concat]``: a concat does not take an add whose
other operand is a convolution's, which takes it instead, as Relax fuses GhostNet's shortcuts).

Defaults live in ``hwlat/fusion_rules/<backend>.json`` (or the backend's own folder); rules
detected by measurement on a device are stored in its ``device.json`` and take precedence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class FusionRules:
    backend: str
    fuse: frozenset = field(default_factory=frozenset)      # {(chain, op)}
    groups: frozenset = field(default_factory=lambda: frozenset({"se", "shuffle"}))
    source: str = ""
    unfused_operands: frozenset = field(default_factory=frozenset)    # {(op, producer)}

    def absorbs(self, chain: str, op: str, operand_from: str | None = None) -> bool:
        if operand_from is not None and ((op, operand_from) in self.unfused_operands
                                         or (op, operand_from, chain) in self.unfused_operands):
            return False
        return (chain, op) in self.fuse

    def to_dict(self) -> dict:
        d = {"backend": self.backend, "fuse": sorted([list(p) for p in self.fuse]),
             "groups": sorted(self.groups), "source": self.source}
        if self.unfused_operands:
            d["unfused_operands"] = sorted([list(p) for p in self.unfused_operands])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FusionRules":
        return cls(d.get("backend", "?"), frozenset(tuple(p) for p in d.get("fuse", [])),
                   frozenset(d.get("groups", ["se", "shuffle"])), d.get("source", ""),
                   frozenset(tuple(p) for p in d.get("unfused_operands", [])))


def _backend_file(backend: str) -> Path | None:
    # a backend may ship its own measured defaults next to its code
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "profilers" / backend / "fusion_rules.json"]
    try:
        candidates.append(Path(str(resources.files("hwlat.profilers"))) / backend / "fusion_rules.json")
    except Exception:  # noqa: BLE001 - profilers not importable: fall through
        pass
    candidates.append(here / "fusion_rules" / f"{backend}.json")
    for c in candidates:
        if c.is_file():
            return c
    return None


def default_rules(backend: str, precision: str = "fp32") -> FusionRules:
    """The backend's default rules; a file may hold rules per precision (``by_precision``)."""
    path = _backend_file(backend) or (Path(__file__).resolve().parent / "fusion_rules" / "generic.json")
    d = json.loads(path.read_text())
    d["backend"] = backend
    if precision in d.get("by_precision", {}):
        d["fuse"] = d["by_precision"][precision]
    return FusionRules.from_dict(d)
