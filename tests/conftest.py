import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def hwlat_home(tmp_path, monkeypatch):
    """A private $HWLAT_HOME so tests never touch the user's devices."""
    monkeypatch.setenv("HWLAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def tiny_net(kind: str = "mixed"):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.se1, self.se2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
            self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.c0(x)
            y = self.dw(x)
            g = nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
            y = self.pw(y * g) + x
            b, c, h, w = y.shape
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
            y = y * torch.sigmoid(y)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    return Net().eval()


@pytest.fixture
def tiny_onnx(tmp_path):
    from hwlat.ir import torch_to_onnx

    path = tmp_path / "tiny.onnx"
    torch_to_onnx(tiny_net(), (1, 3, 32, 32), path)
    return path


def pytest_configure(config):
    # one derived-data cache for the whole session (covering graphs of spaces), outside any
    # per-test $HWLAT_HOME, so each test does not export the same networks again
    import tempfile

    os.environ.setdefault("HWLAT_CACHE", str(Path(tempfile.gettempdir()) / "hwlat-test-cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
