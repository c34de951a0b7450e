"""Benchmark of the ONNX Runtime custom-op library (issue 4), measured side by side.

CPU (default): for N x C x H x W = 8 x 64 x 112 x 112 float32 with (kernel 2, stride 2)
and (kernel 3, stride 2, pad 1), and a 3-D case, prints for SoftPool and StochasticPool
(expectation) with the library:
  * time / ONNX Runtime's AveragePool on the same tensor and window  (target <= 1.3)
  * speed-up over the same file without the library, i.e. its local-function
    decomposition running in ONNX Runtime                               (target >= 4)
  * speed-up over the PyTorch formula avgpool(x*exp(x)) / avgpool(exp(x)) (target >= 3)
--portable: the ``portable`` target's SoftPool/StochasticPool (plain ONNX Runtime, standard
ops only) against the naive standard-op formula Exp, Mul, 2 AveragePool, Div (unstable
above x ~ 88) and against the generic one-hot-Conv decomposition it replaces.
--cuda: the CUDA kernels (through the library's C launchers on torch tensors): time and
achieved bandwidth (input read + output written) against a device-to-device copy.

    python benchmarks/bench_ort.py [--repeat 10] [--threads N] [--case SUBSTRING] [--portable | --cuda]
"""
from __future__ import annotations

import argparse
import datetime
import os

# torch's OpenMP workers spin after each call and would steal the cores of whichever
# column runs next in the interleaved rounds (the library's SoftPool, on 2 cores); set
# before torch loads. ONNX Runtime sessions get the same (allow_spinning 0 below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import platform
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

CASES = [
    ("2-D k2 s2", (8, 64, 112, 112), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("2-D k3 s2 p1", (8, 64, 112, 112), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("3-D k2 s2", (2, 32, 32, 56, 56), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
]


def one_node(op, attrs, domain="poolexport", opset=18):
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["X"], ["Y"], domain=domain, **attrs)
    # opset 18: ONNX Runtime's AveragePool-19 (dilations) takes a slower generic path; the
    # baseline is its fastest AveragePool
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("poolexport", 1)]
    return helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets, ir_version=10)


def timeit(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict, repeat: int) -> dict:
    """Best-of-``repeat`` seconds per callable, timed in interleaved rounds so that every
    column sees the same machine load (the CI/dev machines here are shared)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def session_options(threads):
    """ONNX Runtime options for every column: ``threads`` intra-op threads, no spinning.
    Every session gets its own intra-op pool; with spinning on, one session's idle workers
    keep spinning into the next session's run and steal its cores (on the 2-core dev
    machine the library's 2-thread SoftPool measured slower than 1 thread that way)."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return o


def bench_cpu(repeat, threads=None, case=None):
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from poolexport import ort as pxort

    try:
        from poolexport.onnx.targets import apply_target
    except ImportError:  # the decompositions are not there: skip that column
        apply_target = None

    threads = threads or os.cpu_count()
    torch.set_num_threads(threads)

    so = session_options(threads)
    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}, {threads} cores, "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}; best of {repeat} interleaved runs, ms")
    print("| case | op | library | ORT AveragePool | ratio (<= 1.3) | decomposition | speed-up (>= 4) "
          "| torch formula | speed-up (>= 3) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, shape, a in CASES:
        if case and case not in name:
            continue
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {"X": x}
        avg = ort.InferenceSession(one_node("AveragePool", {**a, "count_include_pad": 0}, domain="").SerializeToString(), so)
        xt = torch.from_numpy(x)
        pool = {4: F.avg_pool2d, 5: F.avg_pool3d}[len(shape)]
        kw = dict(kernel_size=a["kernel_shape"], stride=a["strides"], padding=[p for p in a.get("pads", [0] * 6)[: len(shape) - 2]])

        def torch_formula():
            with torch.no_grad():
                e = torch.exp(xt)
                return pool(xt * e, **kw) / pool(e, **kw)

        fns = {"avg": lambda: avg.run(None, feed), "torch": torch_formula}
        for op, extra in (("SoftPool", {}), ("StochasticPool", {"mode": "expectation"})):
            model = one_node(op, {**a, **extra})
            lib_so = session_options(threads)
            lib = pxort.session(model.SerializeToString(), options=lib_so)
            fns[op] = lambda lib=lib: lib.run(None, feed)
            if apply_target is not None:
                fallback = apply_target(onnx.ModelProto.FromString(model.SerializeToString()), "ort")
                plain = ort.InferenceSession(fallback.SerializeToString(), so, providers=["CPUExecutionProvider"])
                fns[op + " decomposition"] = lambda plain=plain: plain.run(None, feed)
        t = interleaved(fns, repeat)
        for op in ("SoftPool", "StochasticPool"):
            t_lib = t[op]
            dec = (f"{t[op + ' decomposition'] * 1e3:.1f} | {t[op + ' decomposition'] / t_lib:.1f}x"
                   if op + " decomposition" in t else "n/a | n/a")
            tor = f"{t['torch'] * 1e3:.1f} | {t['torch'] / t_lib:.1f}x" if op == "SoftPool" else "- | -"
            print(f"| {name} | {op} | {t_lib * 1e3:.1f} | {t['avg'] * 1e3:.1f} | {t_lib / t['avg']:.2f} | {dec} | {tor} |", flush=True)


def naive_soft_pool(a):
    """The SoftPool paper's formula in standard ops: AvgPool(x*e^x) / AvgPool(e^x)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    pool = {**a, "count_include_pad": 0}
    nodes = [helper.make_node("Exp", ["X"], ["e"]), helper.make_node("Mul", ["X", "e"], ["xe"]),
             helper.make_node("AveragePool", ["xe"], ["num"], **pool),
             helper.make_node("AveragePool", ["e"], ["den"], **pool), helper.make_node("Div", ["num", "den"], ["Y"])]
    return helper.make_model(helper.make_graph(nodes, "naive", [x], [y]), opset_imports=[helper.make_opsetid("", 18)],
                             ir_version=10)


def bench_portable(repeat, threads=None, case=None):
    import onnxruntime as ort

    from poolexport.onnx.targets import apply_target, attach_functions, normalize_nodes

    threads = threads or os.cpu_count()
    so = session_options(threads)
    session = lambda m: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])  # noqa
    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}, {threads} threads, "
          f"onnxruntime {ort.__version__}; plain ONNX Runtime (no library); best of {repeat} interleaved runs, ms")
    print("| case | op | portable | `ort` file, plain ORT | ORT AveragePool | naive formula | portable / naive (<= 1.5) "
          "| generic decomposition | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, shape, a in CASES:
        if case and case not in name:
            continue
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {"X": x}
        avg = session(one_node("AveragePool", {**a, "count_include_pad": 0}, domain=""))
        naive = session(naive_soft_pool(a))
        fns = {"avg": lambda: avg.run(None, feed), "naive": lambda: naive.run(None, feed)}
        for op, extra in (("SoftPool", {}), ("StochasticPool", {"mode": "expectation"})):
            model = one_node(op, {**a, **extra})
            copy = lambda: onnx.ModelProto.FromString(model.SerializeToString())  # noqa: E731
            fast = session(apply_target(copy(), "portable"))
            ort_file = session(apply_target(copy(), "ort"))  # its local functions, inlined by ONNX Runtime
            bare = copy()
            normalize_nodes(bare)
            generic = session(attach_functions(bare, fast=False))  # the one-hot Conv body alone
            fns[op] = lambda s=fast: s.run(None, feed)
            fns[op + " ort"] = lambda s=ort_file: s.run(None, feed)
            fns[op + " generic"] = lambda s=generic: s.run(None, feed)
        t = interleaved(fns, repeat)
        for op in ("SoftPool", "StochasticPool"):
            ratio = f"{t[op] / t['naive']:.2f}" if op == "SoftPool" else "-"
            print(f"| {name} | {op} | {t[op] * 1e3:.1f} | {t[op + ' ort'] * 1e3:.1f} | {t['avg'] * 1e3:.1f} | "
                  f"{t['naive'] * 1e3:.1f} | {ratio} | {t[op + ' generic'] * 1e3:.1f} | "
                  f"{t[op + ' generic'] / t[op]:.1f}x |", flush=True)


def bench_cuda(repeat):
    import ctypes

    import torch

    import poolexport
    from poolexport._window import make_window_spec

    lib = ctypes.CDLL(poolexport.get_library_path())
    f = lib.poolexport_cuda_launch_window
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p]
    print(f"# {datetime.date.today()}  {torch.cuda.get_device_name()}; CUDA events, median of {repeat} runs")
    print("| case | dtype | op | kernel ms | GB/s | D2D copy GB/s (of the input) | fraction |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")

    def cuda_time(fn):
        fn()
        ts = []
        for _ in range(repeat):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e) / 1e3)
        return statistics.median(ts)

    for name, shape, a in CASES:
        for dtype, code in ((torch.float32, 0), (torch.float16, 1)):
            x = torch.randn(shape, device="cuda").to(dtype)
            k = len(shape) - 2
            spec = make_window_spec("bench", k, a["kernel_shape"], a["strides"], a.get("pads", 0))
            out, begin = spec.resolve(shape[2:])
            pad3 = lambda v, fill: [fill] * (3 - k) + list(v)  # noqa: E731
            y = torch.empty((*shape[:2], *out), device="cuda", dtype=dtype)
            copy_dst = torch.empty_like(x)
            t_copy = cuda_time(lambda: copy_dst.copy_(x))
            bw_copy = 2 * x.numel() * x.element_size() / t_copy / 1e9
            for op, scalar in ((0, int(np.float32(1.0).view(np.int32))), (1, 0), (1, 1)):
                p = [shape[0], shape[1], *pad3(shape[2:], 1), *pad3(out, 1), *pad3(spec.kernel_shape, 1),
                     *pad3(spec.strides, 1), *pad3(spec.dilations, 1), *pad3(begin, 0), scalar, 0, 0]
                arr = (ctypes.c_int32 * len(p))(*p)
                stream = torch.cuda.current_stream().cuda_stream
                t = cuda_time(lambda: f(op, code, x.data_ptr(), y.data_ptr(), arr, stream))
                bw = (x.numel() + y.numel()) * x.element_size() / t / 1e9
                opname = ["SoftPool", "StochasticPool expectation", "StochasticPool sample"][op + scalar if op else 0]
                print(f"| {name} | {str(dtype)[6:]} | {opname} | {t * 1e3:.3f} | {bw:.0f} | {bw_copy:.0f} | {bw / bw_copy:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for every column (default: all cores)")
    ap.add_argument("--case", default=None, help="only the CPU cases whose name contains this (e.g. '3-D')")
    ap.add_argument("--cuda", action="store_true", help="benchmark the CUDA kernels (needs a GPU)")
    ap.add_argument("--portable", action="store_true", help="benchmark the portable target's standard-op forms")
    args = ap.parse_args()
    if args.cuda:
        bench_cuda(args.repeat)
    elif args.portable:
        bench_portable(args.repeat, args.threads, args.case)
    else:
        bench_cpu(args.repeat, args.threads, args.case)


if __name__ == "__main__":
    main()
