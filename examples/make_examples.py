"""Regenerate the shipped example models (deterministic: fixed seed, fixed shapes).

    python examples/make_examples.py

* ``resnet_softpool.pt2``: ``poolexport.models`` ResNet with SoftPool downsampling (width
  0.125), as a torch.export program with dynamic batch (and spatial, where the layers let
  torch.export keep them symbolic) sizes; the README's
  first command exports it.
* ``newcbam.ts``: the NewCBAM classifier (stochastic + L2 pooled attention) as a
  TorchScript archive, with its input shape stored in the ``poolexport.json`` extra file.

Both stay well under 1 MB.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPE = (1, 3, 32, 32)


def main() -> int:
    import poolexport  # noqa: F401  (registers the poolexport:: ops)
    from poolexport._loading import EXTRA_FILE
    from poolexport.models import create_model

    torch.manual_seed(0)
    x = torch.randn(*SHAPE)

    resnet = create_model("resnet_softpool", width=0.125).eval()
    # DYNAMIC, not AUTO: a layer that pins a size must fail here, not export a static axis
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    # batch 2 when tracing: torch.export specializes a size-1 dimension
    program = torch.export.export(resnet, (torch.cat([x, x]),), dynamic_shapes=(dims,))
    torch.export.save(program, str(HERE / "resnet_softpool.pt2"))

    torch.manual_seed(0)
    cbam = create_model("newcbam").eval()
    with torch.no_grad():
        traced = torch.jit.trace(cbam, (x,), check_trace=False)
    torch.jit.save(traced, str(HERE / "newcbam.ts"), _extra_files={EXTRA_FILE: json.dumps({"input_shape": SHAPE})})
    for name in ("resnet_softpool.pt2", "newcbam.ts"):
        print(f"{name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
