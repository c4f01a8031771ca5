"""The validation zoo: real CNN families, random init, to check latency predictors against.

Every member is built in plain torch (no torchvision), exports to ONNX with static shapes and
standard ops, and runs in onnxruntime. Together they span about 0.5-40 ms at one thread on a
recent x86 core: depthwise-heavy mobile nets, SE blocks, channel shuffles and splits, concat-heavy
nets (SqueezeNet, GhostNet, DenseNet), dense ResNets/VGG with weights larger than the L3 cache,
and random OFA sub-networks.

    from hwlat import zoo
    for zm in zoo.models(families=["mobilenetv2", "ofa"], ofa_count=5):
        zoo.export_onnx(zm, out_dir / f"{zm.name}.onnx")
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from hwlat.errors import HwlatError


@dataclass(frozen=True)
class ZooModel:
    """One zoo member. ``build()`` returns a fresh eval-mode torch model (weights fixed per name)."""

    name: str
    family: str
    factory: Callable[[], Any] = field(repr=False, compare=False)
    input_shape: tuple[int, int, int, int] = (1, 3, 224, 224)
    arch: str | None = None          # the space key, for members that come from a search space

    def build(self):
        import torch

        # weights depend on the name only, so an exported file is reproducible
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(self.name.encode()))
            return self.factory()


def _n(name: str):
    """Lazy access to the net definitions (imports torch only when a model is built)."""

    def get(*args, **kwargs):
        from hwlat import zoo_nets

        return getattr(zoo_nets, name)(*args, **kwargs)

    return get


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else f"{x:.1f}"


def _fixed_members() -> list[ZooModel]:
    out: list[ZooModel] = []

    def add(name: str, family: str, fn: Callable, r: int, *args, **kwargs):
        out.append(ZooModel(name, family, lambda: fn(*args, **kwargs), (1, 3, r, r)))

    for w in (0.5, 0.75, 1.0):
        for r in (160, 224):
            add(f"mobilenetv2-w{_fmt(w)}-r{r}", "mobilenetv2", _n("mobilenet_v2"), r, w)
    for variant, w, r in (("large", 1.0, 224), ("large", 0.75, 224), ("large", 1.0, 160),
                          ("small", 1.0, 224), ("small", 0.75, 224)):
        add(f"mobilenetv3-{variant}-w{_fmt(w)}-r{r}", "mobilenetv3", _n("mobilenet_v3"), r, variant, w)
    for a, r in ((0.5, 224), (1.0, 224), (1.0, 160)):
        add(f"mnasnet-w{_fmt(a)}-r{r}", "mnasnet", _n("mnasnet"), r, a)
    for w in (0.5, 1.0, 1.5):
        add(f"shufflenetv2-w{_fmt(w)}-r224", "shufflenetv2", _n("shufflenet_v2"), 224, w)
    for depth in (18, 34):
        for r in (160, 224):
            add(f"resnet{depth}-r{r}", "resnet", _n("resnet"), r, depth)
    for version, r in (("1.0", 224), ("1.1", 224), ("1.1", 160)):
        add(f"squeezenet{version}-r{r}", "squeezenet", _n("squeezenet"), r, version)
    for r in (112, 128, 160):
        add(f"vgg11-r{r}", "vgg", _n("vgg11"), r)
    for w, r in ((0.5, 224), (1.0, 224), (1.0, 160)):
        add(f"efficientnet-b0-w{_fmt(w)}-r{r}", "efficientnet", _n("efficientnet_b0"), r, w)
    for w in (0.5, 1.0, 1.3):
        add(f"ghostnet-w{_fmt(w)}-r224", "ghostnet", _n("ghostnet"), 224, w)
    for g, blocks, r in ((12, (4, 8, 12, 8), 224), (24, (6, 12, 16, 12), 160), (24, (6, 12, 16, 12), 224)):
        add(f"densenet-g{g}-{'.'.join(map(str, blocks))}-r{r}", "densenet", _n("densenet"), r, g, blocks)
    return out


_FAMILIES = ("mobilenetv2", "mobilenetv3", "mnasnet", "shufflenetv2", "resnet", "squeezenet", "vgg",
             "efficientnet", "ghostnet", "densenet", "ofa")


def families() -> list[str]:
    return list(_FAMILIES)


def _ofa_members(count: int, seed: int) -> list[ZooModel]:
    from hwlat.search import spaces

    space = spaces.get("ofa-mbv3")
    out = []
    for i, arch in enumerate(space.sample(count, seed=seed)):
        out.append(ZooModel(f"ofa-{i:03d}", "ofa", lambda a=arch: space.build(a), space.input_shape(arch),
                            arch=space.key(arch)))
    return out


def models(families: Iterable[str] | None = None, seed: int = 0, ofa_count: int = 20) -> list[ZooModel]:
    """The zoo's members, optionally only some families; ``seed``/``ofa_count`` pick the OFA nets."""
    wanted = list(_FAMILIES) if families is None else [families] if isinstance(families, str) else list(families)
    unknown = [f for f in wanted if f not in _FAMILIES]
    if unknown:
        raise HwlatError(f"unknown zoo family {', '.join(unknown)}: choose from {', '.join(_FAMILIES)}")
    out = [m for m in _fixed_members() if m.family in wanted]
    if "ofa" in wanted and ofa_count > 0:
        out += _ofa_members(ofa_count, seed)
    return out


def get(name: str, seed: int = 0, ofa_count: int = 20) -> ZooModel:
    for m in models(seed=seed, ofa_count=ofa_count):
        if m.name == name:
            return m
    raise HwlatError(f"no zoo model named '{name}': see hwlat.zoo.models() for the names")


def export_onnx(zoo_model: ZooModel, path: str | Path, opset: int = 17) -> Path:
    """Export a zoo member to ONNX (static shapes, input 'input', output 'output')."""
    return export_module(zoo_model.build(), zoo_model.input_shape, path, opset=opset)


def export_module(model, input_shape: tuple[int, ...], path: str | Path, opset: int = 17) -> Path:
    """Export any torch module with the zoo's settings (TorchScript exporter, constant folding).

    The file appears only when complete (written to ``<path>.part``, then renamed).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    threads = torch.get_num_threads()
    # tracing runs a real forward; torch's OpenMP pool spin-waits badly on a shared 2-core host
    # (seconds per export), one thread is 10-50x faster there
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in favour of dynamo; it is the one that gives
            # plain static-shape graphs, so keep its deprecation notice quiet
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.randn(tuple(input_shape)),), str(tmp), dynamo=False,
                              opset_version=opset, input_names=["input"], output_names=["output"],
                              do_constant_folding=True)
        tmp.replace(path)
    finally:
        torch.set_num_threads(threads)
        tmp.unlink(missing_ok=True)
    return path
