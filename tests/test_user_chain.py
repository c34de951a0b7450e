"""A deployment engineer's chain, for every pool kind replace_pools offers: a network built
from torchvision's own building blocks (torch.nn only: torchvision is not installed here),
.eval(), replace_pools, torch.export with a dynamic batch, the CLI, then a bare ONNX Runtime
session (the user's own, with only the custom-op library registered), with no warning on
the way and the outputs matching PyTorch's.
"""
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import poolexport.nn as pnn
from poolexport import cli

ort = pytest.importorskip("onnxruntime")

# catavgmax concatenates two pools: it doubles the channels, so it fits a head
# (timm's SelectAdaptivePool2d), not a drop-in swap inside an SE block
KINDS = [k for k in pnn.POOL_NAMES if k != "catavgmax"]


class SqueezeExcite(nn.Module):
    """torchvision.ops.SqueezeExcitation's structure: AdaptiveAvgPool2d(1), two 1x1 convs."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def mobilenet_like():
    """The pools of torchvision's resnet18 (MaxPool2d stem, AdaptiveAvgPool2d head) and
    mobilenet_v3_small (SE blocks), plus an AvgPool2d downsample."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), SqueezeExcite(16, 8),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 1), nn.ReLU(), SqueezeExcite(16, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_eval_replace_export_cli_bare_session(kind, tmp_path, capfd):
    torch.manual_seed(0)
    net = mobilenet_like().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "no warnings on the way"
        swapped = pnn.replace_pools(net, kind)
        assert not any(m.training for m in net.modules()), "replace_pools left a module in training mode"
        x = torch.rand(2, 3, 32, 32) + 0.1
        program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    assert swapped, f"replace_pools swapped nothing for {kind!r}"
    torch.export.save(program, tmp_path / "net.pt2")

    out = tmp_path / "net.onnx"
    code = cli.main([str(tmp_path / "net.pt2"), "-o", str(out)])
    printed = capfd.readouterr()
    assert code == 0, printed.out[-3000:] + printed.err[-3000:]
    assert "warn" not in printed.err.lower(), printed.err[-3000:]

    # the user's own session: the library from the file's metadata, nothing else of ours
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    so = ort.SessionOptions()
    so.log_severity_level = 1  # info and up: a load-time warning would be printed
    if meta.get("poolexport.custom_op_library"):
        from poolexport.ort import get_library_path

        so.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        xb = torch.rand(batch, 3, 32, 32) + 0.1
        (got,) = session.run(None, {session.get_inputs()[0].name: xb.numpy()})
        with torch.no_grad():
            want = net(xb).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{kind}, batch {batch}")
    err = capfd.readouterr().err
    # a dead initializer is warned about at load ("It is not used by any node"); the optimizer
    # later logs its own removals at info level ("It is no longer used"), which is fine
    warned = [line for line in err.splitlines() if "[W:" in line or "It is not used by any node" in line]
    assert not warned, "\n".join(warned[:5])
