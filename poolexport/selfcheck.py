"""One GPU self-check: ``python -m poolexport.selfcheck --gpu [-o selfcheck.json]``.

For a lent or new GPU machine (torch with CUDA, CuPy, nvcc; onnxruntime-gpu and TensorRT
optional). In one run, each part skipped with its reason when something is missing:

* ``library``: the custom-op library's CUDA kernels (every op, both modes, float32 and
  float16; the adaPool family with its extra inputs) through its C launchers on torch
  CUDA tensors;
* ``ptx``: the TensorRT plugins' PTX loaded by CuPy and launched with the plugins' grid
  (``abi.launch_grid`` of ``shapes.launch_total``) and int32 arguments
  (``shapes.kernel_args``), one pointer per input (``abi.kernel_inputs``), as TensorRT would;
* ``torch``: the torch ops on CUDA tensors (the adaPool family's are pure torch);

each against the torch ops on the CPU (sampled picks bit for bit). AdaPool's Beta is drawn
in [0, 1] with a broadcast shape, AdaUnpool's MaskEdscw and MaskEm in [0, 1] at the output
size, each with an N or C axis of 1 in some case. Then the time of each
backend at 8x64x112x112 and 32x256x56x56 against a device-to-device copy of the input.
Writes one JSON report and prints a summary; exits 1 when a check fails, else 0 (also
where there is no GPU: the report then says "no GPU"). The report's ``steps`` holds each
step's seconds; ``--estimate`` prints what each step should cost on a GPU machine, without
one.

Every GPU access goes through one device layer (:class:`CudaDevice`: torch CUDA tensors,
CuPy). ``--device-layer module:factory`` swaps it for a stand-in: tests/fake_gpu.py runs
the whole check on the CPU over the CUDA kernels compiled for host emulation, with a fake
CuPy whose ``RawModule`` follows CuPy 13's signature.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .tensorrt import abi, ptx, shapes

# (op, X's shape, attributes[, shapes of the inputs after X]): every entry point, both
# stochastic modes, 1-D to 3-D; AdaPool's Beta and AdaUnpool's masks in broadcast forms
CASES = [
    ("SoftPool", (2, 3, 17), dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1, beta=0.5)),
    ("SoftPool", (2, 4, 12, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=1.0)),
    ("SoftPool", (1, 2, 6, 7, 8), dict(kernel_shape=[2, 2, 3], strides=[2, 1, 2], auto_pad="SAME_UPPER", beta=4.0)),
    ("StochasticPool", (2, 3, 12, 10), dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1, mode="expectation")),
    ("StochasticPool", (2, 3, 12, 10), dict(kernel_shape=[3, 3], strides=[1, 2], dilations=[2, 1], mode="sample",
                                           seed=2**40 + 5)),
    ("ReduceSoftPool", (2, 16, 7, 5), dict(axes=[1], keepdims=1, beta=1.5)),
    ("ReduceSoftPool", (3, 4, 5, 6), dict(axes=[2, 3], keepdims=0, beta=1.0)),
    ("ReduceStochasticPool", (2, 16, 6, 6), dict(axes=[2, 3], keepdims=1, mode="expectation")),
    ("ReduceStochasticPool", (2, 3, 4, 5), dict(axes=[0, 3], keepdims=0, mode="sample", seed=-(2**40) - 7)),
    ("EdscwPool", (2, 4, 12, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("EdscwPool", (1, 2, 6, 7, 8), dict(kernel_shape=[2, 2, 3], strides=[2, 1, 2], auto_pad="SAME_UPPER")),
    ("IdwPool", (2, 4, 12, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("IdwPool", (2, 3, 17), dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1)),
    # Beta: the reference repository's form (the output's spatial shape), per channel, one scalar
    ("AdaPool", (2, 4, 12, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [(6, 6)]),
    ("AdaPool", (2, 3, 17), dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1), [(1, 3, 1)]),
    ("AdaPool", (1, 2, 6, 7, 8), dict(kernel_shape=[2, 2, 3], strides=[2, 1, 2], auto_pad="SAME_UPPER"), [(1,)]),
    # X (N, C, *I); MaskEdscw, MaskEm (N|1, C|1, *O); Beta broadcast to X
    ("AdaUnpool", (2, 4, 6, 6), {}, [(2, 4, 12, 11), (2, 1, 12, 11), (6, 6)]),
    ("AdaUnpool", (2, 3, 7), {}, [(1, 3, 17), (2, 3, 17), (2, 1, 1)]),
    ("AdaUnpool", (1, 2, 3, 4, 4), {}, [(1, 1, 6, 7, 8), (1, 2, 6, 7, 8), (1, 2, 1, 1, 1)]),
]
# in the order of poolexport_cuda_launch_ada's op codes (launch.h: 0, 1, 2)
ADA_WINDOW_OPS = ("EdscwPool", "IdwPool", "AdaPool")
# the README's benchmark shapes; windows as in its CPU tables
BENCH_SHAPES = [(8, 64, 112, 112), (32, 256, 56, 56)]
BENCH_OPS = [
    ("SoftPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=1.0)),
    ("StochasticPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], mode="expectation")),
    ("ReduceSoftPool", dict(axes=[2, 3], keepdims=1, beta=1.0)),
    ("ReduceStochasticPool", dict(axes=[2, 3], keepdims=1, mode="expectation")),
]
TOL = {"float32": 1e-5, "float16": 2e-3}  # rtol, and atol in units of the scale below; sample mode: exact


def _torch_ref(op, inputs, a):
    """The torch op (the definition) on whatever device ``inputs`` (X, then the others) live on."""
    import torch

    import poolexport.ops  # noqa: F401  (registers torch.ops.poolexport)

    ops = torch.ops.poolexport
    x = inputs[0]
    if op == "AdaUnpool":
        return ops.ada_unpool(*inputs)
    if op in ("SoftPool", "StochasticPool") + ADA_WINDOW_OPS:
        k = len(a["kernel_shape"])
        w = (a["kernel_shape"], a.get("strides", [1] * k), a.get("pads", [0] * 2 * k), a.get("dilations", [1] * k),
             bool(a.get("ceil_mode", 0)), a.get("auto_pad", "NOTSET"))
        if op == "EdscwPool":
            return ops.edscw_pool(x, *w)
        if op == "IdwPool":
            return ops.idw_pool(x, *w)
        if op == "AdaPool":
            return ops.ada_pool(x, inputs[1], *w)
        if op == "SoftPool":
            return ops.soft_pool(x, *w, a.get("beta", 1.0))
        return ops.stochastic_pool(x, *w, a.get("mode", "expectation"), a.get("seed", 0))
    if op == "ReduceSoftPool":
        return ops.reduce_soft_pool(x, a["axes"], bool(a["keepdims"]), a.get("beta", 1.0))
    return ops.reduce_stochastic_pool(x, a["axes"], bool(a["keepdims"]), a.get("mode", "expectation"), a.get("seed", 0))


def _compare(got: np.ndarray, ref: np.ndarray, x: np.ndarray, a: dict, dtype: str) -> dict:
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    if got.shape != ref.shape:
        return {"status": "fail", "why": f"shape {got.shape} != reference {ref.shape}"}
    if not np.isfinite(got64).all():
        return {"status": "fail", "why": "non-finite output"}
    err = float(np.abs(got64 - ref64).max()) if got.size else 0.0
    if a.get("mode") == "sample":
        ok = np.array_equal(got64, ref64)
    else:
        # float32: device expf vs host exp and summation order, a few ulps of the inputs'
        # scale; float16: the output's own rounding
        scale = max(1.0, float(np.abs(x.astype(np.float64)).max())) if dtype == "float32" else 1.0
        ok = bool(np.all(np.abs(got64 - ref64) <= TOL[dtype] * (scale + np.abs(ref64))))
    return {"status": "pass" if ok else "fail", "max_abs_err": err}


# ------------------------------------------------------------------ the device layer
class CudaDevice:
    """The real GPU: torch CUDA tensors for the library and torch backends, CuPy for the
    PTX. Each method is one thing a backend needs from a device."""

    def name(self):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - a broken torch install counts as no torch
            pass
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception:  # noqa: BLE001 - no CuPy or no driver
            pass
        return None

    # -- torch CUDA tensors: the library's C launchers and the torch ops
    def torch_ready(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch without CUDA (install a CUDA build of torch)")

    def library(self) -> ctypes.CDLL:
        from .ort import get_library_path

        return ctypes.CDLL(get_library_path())

    def to_device(self, x_np):
        import torch

        return torch.from_numpy(x_np).cuda()

    def nan_like_output(self, shape, like):
        import torch

        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)

    def ptr(self, t) -> int:
        return t.data_ptr()

    def stream(self):
        import torch

        return torch.cuda.current_stream().cuda_stream

    def to_host(self, t):
        return t.cpu().numpy()

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()

    def torch_op(self, op, inputs, a):
        """The torch op on device tensors (poolexport.ops: the CUDA kernels via _native; the
        adaPool family's ops are pure torch)."""
        return _torch_ref(op, inputs, a)

    def copy_seconds(self, x_np, iters: int):
        """Seconds of one device-to-device copy of x (the bandwidth yardstick)."""
        import torch

        if not torch.cuda.is_available():
            return None
        src = self.to_device(x_np)
        dst = torch.empty_like(src)
        return _time(self.sync, lambda: dst.copy_(src), iters)

    # -- CuPy: the TensorRT plugins' PTX
    def cupy(self):
        import cupy

        return cupy


def load_device_layer(spec: str):
    """``module:factory`` -> the factory's device layer (a stand-in for tests)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "Device")()


# ------------------------------------------------------------------ backends
class LibraryBackend:
    """The ORT library's C launchers on device tensors (``launch.h``)."""

    name = "library"

    def __init__(self, dev):
        dev.torch_ready()
        lib = dev.library()
        if not hasattr(lib, "poolexport_cuda_launch_window"):
            raise RuntimeError("the custom-op library was built without CUDA (nvcc missing at `pip install` time)")
        from ._cuda_driver import library_cuda_problem

        why = library_cuda_problem(lib)
        if why:
            raise RuntimeError(why)
        p, ptr, i = ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p, ctypes.c_int
        # launch.h: (op, dtype, inputs..., Y, p, stream); AdaUnpool's launcher has no op
        signatures = {"poolexport_cuda_launch_window": [i, i, ptr, ptr, p, ptr],
                      "poolexport_cuda_launch_reduce": [i, i, ptr, ptr, p, ptr],
                      "poolexport_cuda_launch_ada": [i, i, ptr, ptr, ptr, p, ptr],
                      "poolexport_cuda_launch_ada_unpool": [i, ptr, ptr, ptr, ptr, ptr, p, ptr]}
        for name, argtypes in signatures.items():
            f = getattr(lib, name, None)  # a library older than the adaPool kernels: those rows error
            if f is not None:
                f.argtypes, f.restype = argtypes, ctypes.c_int
        lib.poolexport_cuda_error_string.restype = ctypes.c_char_p  # the error's name, not a pointer as an int
        self.lib, self.dev = lib, dev

    def prepare(self, op, inputs_np, a):
        dev = self.dev
        inputs = [dev.to_device(i) for i in inputs_np]
        args, out_shape = shapes.kernel_args(op, list(inputs_np[0].shape), a, others=[i.shape for i in inputs_np[1:]])
        y = dev.nan_like_output(out_shape, inputs[0])
        p = (ctypes.c_int32 * len(args))(*args)
        dt = 1 if inputs_np[0].dtype == np.float16 else 0
        if op == "AdaUnpool":
            launch, lead = self.lib.poolexport_cuda_launch_ada_unpool, (dt,)
        elif op in ADA_WINDOW_OPS:
            # Beta is read by AdaPool alone; the others get X in its place
            launch, lead = self.lib.poolexport_cuda_launch_ada, (ADA_WINDOW_OPS.index(op), dt)
            inputs = inputs + inputs[:1] * (2 - len(inputs))
        else:
            launch = (self.lib.poolexport_cuda_launch_window if op in shapes.WINDOWED_OPS
                      else self.lib.poolexport_cuda_launch_reduce)
            lead = (0 if op in ("SoftPool", "ReduceSoftPool") else 1, dt)

        def run():
            rc = launch(*lead, *[dev.ptr(i) for i in inputs], dev.ptr(y), p, dev.stream())
            if rc:
                raise RuntimeError(f"{op}: launch failed: {self.lib.poolexport_cuda_error_string(rc).decode()}")

        return run, lambda: dev.to_host(y)

    def sync(self):
        self.dev.sync()


class PTXBackend:
    """The TensorRT plugins' PTX through CuPy, with the plugins' grid and arguments."""

    name = "ptx"

    def __init__(self, dev):
        cupy = dev.cupy()
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        path = ptx.ptx_path()
        text = path.read_text()
        ptx.check_driver(text)
        self.isa = ptx.ptx_isa(text)
        # path=: CuPy loads a PTX or cubin file with cuModuleLoad; code= would hand the PTX
        # text to NVRTC as CUDA C++ (cupy/_core/raw.pyx, RawModule and _get_raw_module)
        self.module = cupy.RawModule(path=str(path))
        self.cupy = cupy

    def prepare(self, op, inputs_np, a):
        cupy = self.cupy
        x_np, others = inputs_np[0], [i.shape for i in inputs_np[1:]]
        dtype = "float16" if x_np.dtype == np.float16 else "float32"
        args, out_shape = shapes.kernel_args(op, list(x_np.shape), a, others=others)
        inputs = [cupy.asarray(i) for i in inputs_np]  # abi.kernel_inputs(op) order
        y = cupy.full(out_shape, np.nan, dtype=inputs[0].dtype)
        kernel = self.module.get_function(abi.kernel_name(op, dtype))
        grid = abi.launch_grid(shapes.launch_total(op, list(x_np.shape), a, others=others))
        scalars = [np.int32(v) for v in args]

        def run():
            kernel((grid, 1, 1), (abi.BLOCK, 1, 1), (*inputs, *scalars, y))

        return run, lambda: cupy.asnumpy(y)

    def sync(self):
        self.cupy.cuda.runtime.deviceSynchronize()


class TorchBackend:
    """The torch ops (poolexport.ops) on device tensors."""

    name = "torch"

    def __init__(self, dev):
        dev.torch_ready()
        self.dev = dev

    def prepare(self, op, inputs_np, a):
        inputs = [self.dev.to_device(i) for i in inputs_np]
        out = {}

        def run():
            out["y"] = self.dev.torch_op(op, inputs, a)

        return run, lambda: self.dev.to_host(out["y"])

    def sync(self):
        self.dev.sync()


# ------------------------------------------------------------------ the run
def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "onnxruntime", "cupy", "tensorrt"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - missing or broken: say which
            out[mod] = None
            out[f"{mod}_missing"] = f"{type(e).__name__}: {e}".splitlines()[0]
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001
        pass
    drv = ptx.driver_version()
    out["cuda_driver"] = f"{drv[0]}.{drv[1]}" if drv else None
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    return out


def _missing(versions: dict) -> list[str]:
    miss = []
    if versions.get("cuda_driver") is None:
        miss.append("CUDA driver (libcuda.so.1)")
    if not versions.get("torch_cuda"):
        miss.append("torch with CUDA")
    if versions.get("cupy") is None:
        miss.append("CuPy (pip install '.[gpu]')")
    if "CUDAExecutionProvider" not in (versions.get("onnxruntime_providers") or []):
        miss.append("onnxruntime-gpu: the ORT CUDA provider (pip install '.[gpu]'; then pytest tests/test_ort_cuda.py)")
    if versions.get("tensorrt") is None:
        miss.append("TensorRT: engines are not built (pytest tests/test_tensorrt_engine.py where it is installed)")
    if ptx.find_nvcc() is None:
        miss.append("nvcc (the PTX is then only found if shipped)")
    return miss


def _correctness(backends, report):
    import torch

    rng = np.random.default_rng(0)
    for op, shape, a, *rest in CASES:
        others = rest[0] if rest else []
        x32 = (rng.standard_normal(shape) * 3).astype(np.float32)
        if "mode" in a:
            x32 = np.maximum(x32, 0)  # stochastic pooling's domain: activations after ReLU
        # Beta and the masks: in [0, 1], their domain (AdaUnpool clips the masks to it)
        inputs32 = [x32] + [rng.uniform(0, 1, s).astype(np.float32) for s in others]
        for dtype in ("float32", "float16"):
            inputs = [i.astype(dtype) for i in inputs32]
            x = inputs[0]
            ref = _torch_ref(op, [torch.from_numpy(i) for i in inputs], a).numpy()
            for b in backends:
                row = {"backend": b.name, "op": op, "shape": list(shape), "attrs": a, "dtype": dtype}
                if others:
                    row["others"] = [list(s) for s in others]
                try:
                    run, fetch = b.prepare(op, inputs, a)
                    run()
                    b.sync()
                    row.update(_compare(fetch(), ref, x, a, dtype))
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    row.update(status="error", why=f"{type(e).__name__}: {e}".splitlines()[0])
                report["checks"].append(row)


def _time(sync, run, iters: int) -> float:
    run()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    sync()
    return (time.perf_counter() - t0) / iters


def _bandwidth(dev, backends, report, iters: int, bench_shapes):
    import torch

    for shape in bench_shapes:
        x32 = np.maximum(np.random.default_rng(1).standard_normal(shape), 0).astype(np.float32)
        for dtype in ("float32", "float16"):
            x = x32.astype(dtype)
            nbytes = x.nbytes
            try:
                copy_s = dev.copy_seconds(x, iters)
            except Exception:  # noqa: BLE001 - the yardstick is optional
                copy_s = None
            for op, a in BENCH_OPS:
                out_shape = shapes.kernel_args(op, list(shape), a)[1]
                moved = nbytes + int(np.prod(out_shape)) * x.itemsize
                ref = _torch_ref(op, [torch.from_numpy(x)], a).numpy()  # a timed kernel must also be right
                for b in backends:
                    row = {"backend": b.name, "op": op, "shape": list(shape), "dtype": dtype}
                    try:
                        run, fetch = b.prepare(op, [x], a)
                        sec = _time(b.sync, run, iters)
                        row.update(_compare(fetch(), ref, x, a, dtype))
                        row.update(ms=round(sec * 1e3, 4), gb_s=round(moved / sec / 1e9, 1))
                        if copy_s:
                            # the copy reads and writes the input once: 2 * nbytes
                            row.update(copy_ms=round(copy_s * 1e3, 4), copy_gb_s=round(2 * nbytes / copy_s / 1e9, 1),
                                       vs_copy=round(copy_s / sec, 3))
                    except Exception as e:  # noqa: BLE001
                        row.update(status="error", why=f"{type(e).__name__}: {e}".splitlines()[0])
                    report["bandwidth"].append(row)


def run_gpu(iters: int = 20, dev=None, require_all: bool = False) -> dict:
    dev = dev or CudaDevice()
    steps = {}
    t0 = time.perf_counter()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "versions": _versions(), "device": dev.name(), "checks": [],
              "bandwidth": [], "skipped": {}, "steps": steps}
    report["missing"] = _missing(report["versions"])
    steps["versions_s"] = round(time.perf_counter() - t0, 2)
    if report["device"] is None:
        report["status"] = "no GPU"
        return report
    backends = []
    for cls in (LibraryBackend, PTXBackend, TorchBackend):
        t0 = time.perf_counter()
        try:
            backends.append(cls(dev))
        except Exception as e:  # noqa: BLE001 - named in the report, the others still run
            report["skipped"][cls.name] = f"{type(e).__name__}: {e}".splitlines()[0]
        steps[f"setup_{cls.name}_s"] = round(time.perf_counter() - t0, 2)
    ptx_backend = [b for b in backends if b.name == "ptx"]
    if ptx_backend:
        report["ptx_isa"] = ptx_backend[0].isa
    t0 = time.perf_counter()
    _correctness(backends, report)
    steps["correctness_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    _bandwidth(dev, backends, report, iters, getattr(dev, "bench_shapes", BENCH_SHAPES))
    steps["bandwidth_s"] = round(time.perf_counter() - t0, 2)
    bad = [c for c in report["checks"] + report["bandwidth"] if c["status"] != "pass"]
    report["status"] = "fail" if bad or not backends or (require_all and report["skipped"]) else "pass"
    return report


# ------------------------------------------------------------------ the run-time estimate
# What each step costs on a lent GPU machine (H200-class, ~4 TB/s; PCIe or NVLink-C2C host
# link), from the work each step does. Measured on the CPU-only development machine:
# `python -m poolexport.tensorrt.ptx -o k.ptx` (nvcc -ptx + ptxas of the 8 entry points)
# 17 s wall on 2 shared cores; `import torch` 2-3 s. Device costs are assumptions, named.
ASSUMED = {"host_to_device_gb_s": 10.0, "device_gb_s": 2000.0, "launch_s": 20e-6, "context_s": 3.0,
           "ptx_jit_s": 5.0, "cupy_import_s": 2.0, "nvcc_ptx_s": 20.0, "torch_import_s": 3.0,
           "randn_s_per_melem": 0.025, "cpu_reference_s_per_case": 0.05, "cpu_reference_s_per_melem": 0.01}


def estimate(iters: int = 20, bench_shapes=None) -> list[tuple[str, float, str]]:
    """[(step, seconds, basis)]: the self-check's run time on a GPU machine."""
    A = ASSUMED
    bench_shapes = bench_shapes or BENCH_SHAPES
    n_backends = 3
    checks = len(CASES) * 2 * n_backends
    steps = [
        ("imports: torch, CuPy, onnxruntime, TensorRT probe", A["torch_import_s"] + A["cupy_import_s"],
         "torch 3 s + CuPy 2 s"),
        ("CUDA context (torch, then CuPy on the same device)", A["context_s"], "driver init, once"),
        ("PTX: nvcc -ptx + ptxas (first run; cached in ~/.cache/poolexport)", A["nvcc_ptx_s"],
         "17 s measured on 2 CPU cores; 0 s when POOLEXPORT_PTX or the cache has it"),
        ("PTX: the driver JIT-compiles compute_75 for the GPU (first load)", A["ptx_jit_s"],
         f"{2 * len(abi.KERNELS)} entry points"),
        ("correctness", checks * (A["launch_s"] + 0.002) + len(CASES) * 2 * A["cpu_reference_s_per_case"],
         f"{checks} launches + copies, {len(CASES) * 2} CPU references"),
    ]
    bench = 0.0
    launches = 0
    for shape in bench_shapes:
        melem = float(np.prod(shape)) / 1e6
        bench += melem * A["randn_s_per_melem"]  # the input, once per shape
        for itemsize in (4, 2):
            nbytes = melem * 1e6 * itemsize
            prepares = len(BENCH_OPS) * n_backends + 1  # + the copy's source
            bench += prepares * nbytes / (A["host_to_device_gb_s"] * 1e9)
            bench += len(BENCH_OPS) * melem * A["cpu_reference_s_per_melem"]  # each row's CPU reference
            bench += len(BENCH_OPS) * n_backends * nbytes / (A["host_to_device_gb_s"] * 1e9)  # outputs fetched (<= input)
            per_launch = 2 * nbytes / (A["device_gb_s"] * 1e9) + A["launch_s"]
            bench += (len(BENCH_OPS) * n_backends + 1) * (iters + 1) * per_launch
            launches += (len(BENCH_OPS) * n_backends + 1) * (iters + 1)
    steps.append(("bandwidth (each row also checked against the CPU kernels)", bench,
                  f"{launches} timed launches, inputs copied at {A['host_to_device_gb_s']:.0f} GB/s, CPU references"))
    return steps


def _estimate_text(iters: int) -> str:
    rows = estimate(iters)
    lines = [f"{s:66s} {sec:7.1f} s  ({why})" for s, sec, why in rows]
    lines.append(f"{'total':66s} {sum(sec for _, sec, _ in rows):7.1f} s")
    return "\n".join(lines)


def _summary(report: dict) -> str:
    lines = [f"poolexport self-check: {report['status']} (device: {report['device'] or 'none'})"]
    for name, why in report.get("skipped", {}).items():
        lines.append(f"  skipped {name}: {why}")
    for m in report["missing"]:
        lines.append(f"  missing: {m}")
    if report["checks"]:
        by = {}
        for c in report["checks"]:
            by.setdefault(c["backend"], []).append(c["status"] == "pass")
        for name, ok in by.items():
            lines.append(f"  {name}: {sum(ok)}/{len(ok)} kernel checks pass")
    for r in report["bandwidth"]:
        if r["status"] != "pass":
            lines.append(f"  {r['backend']}: benchmark {r['op']} {r['dtype']} {r['status']}: "
                         f"{r.get('why') or 'max abs err ' + str(r.get('max_abs_err'))}")
    for r in report["bandwidth"]:
        if "ms" in r:
            lines.append(f"  {r['backend']:8s} {r['op']:21s} {'x'.join(map(str, r['shape'])):16s} {r['dtype']:8s} "
                         f"{r['ms']:9.3f} ms {r['gb_s']:7.1f} GB/s" + (f"  {r['vs_copy']:.2f}x copy" if "vs_copy" in r else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m poolexport.selfcheck", description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", required=True, help="run the GPU checks (the only mode)")
    p.add_argument("-o", "--output", type=Path, default=Path("selfcheck.json"), help="JSON report (%(default)s)")
    p.add_argument("--iters", type=int, default=20, help="timed launches per benchmark row (%(default)s)")
    p.add_argument("--require-all", action="store_true",
                   help="fail when a backend is skipped (a GPU machine that should have the whole stack)")
    p.add_argument("--estimate", action="store_true", help="print each step's expected cost on a GPU machine and exit")
    p.add_argument("--device-layer", metavar="MODULE:FACTORY",
                   help="a stand-in device layer (tests/fake_gpu.py:FakeDevice runs the check on the CPU)")
    args = p.parse_args(argv)
    if args.estimate:
        print(_estimate_text(args.iters))
        return 0
    report = run_gpu(args.iters, load_device_layer(args.device_layer) if args.device_layer else None, args.require_all)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(_summary(report))
    print(f"report: {args.output}")
    return 1 if report["status"] == "fail" or (args.require_all and report["status"] == "no GPU") else 0


if __name__ == "__main__":
    sys.exit(main())
