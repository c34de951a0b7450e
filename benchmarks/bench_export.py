"""Export + parity time of each example model (a benchmark, not a test).

    python benchmarks/bench_export.py [--repeat 1] [--markdown]

For every model of poolexport.models (default input shape, batch 2) and each exporter:
wall time of torch.onnx export + target shaping, of onnx.checker (full_check), and of the
parity check (PyTorch float64 reference + every runtime present, two input shapes).
Prints a markdown table for the README.
"""
from __future__ import annotations

import argparse
import platform
import time

import onnx
import torch

import poolexport.models as models
from poolexport.onnx.export import export_model
from poolexport.parity import check_parity, parity_shapes


def bench(name: str, exporter: str, target: str = "ort"):
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    shape = (2,) + tuple(models.default_input_shape(name)[1:])
    x = torch.randn(*shape)
    module = torch.jit.trace(model, x, check_trace=False) if exporter == "torchscript" else model
    t0 = time.perf_counter()
    proto = export_model(module, x, target=target, exporter=exporter)
    t1 = time.perf_counter()
    onnx.checker.check_model(proto, full_check=True)
    t2 = time.perf_counter()
    report = check_parity(proto, model, parity_shapes(proto, shape))
    t3 = time.perf_counter()
    ran = [r.runtime for r in report.summary() if r.status != "skip"]
    return dict(model=name, exporter=exporter, export=t1 - t0, check=t2 - t1, parity=t3 - t2,
                passed=report.passed, runtimes=ran, size=len(proto.SerializeToString()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exporters", default="dynamo,torchscript")
    p.add_argument("--models", default=",".join(models.list_models()))
    args = p.parse_args()
    rows = [bench(m, e) for m in args.models.split(",") for e in args.exporters.split(",")]
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print("| model | exporter | export (s) | checker (s) | parity (s) | parity | runtimes run | ONNX size |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['exporter']} | {r['export']:.1f} | {r['check']:.2f} | {r['parity']:.1f} | "
              f"{'pass' if r['passed'] else 'FAIL'} | {', '.join(r['runtimes'])} | {r['size'] / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
