"""A stand-in GPU for ``python -m poolexport.selfcheck --gpu --device-layer fake_gpu:FakeDevice``
(run with ``tests/`` on PYTHONPATH): the self-check end to end on the CPU.

* The CUDA kernels: custom_ops/cuda/kernels.cu compiled as C++ against the shim of
  tests/test_kernels_emulated.py (every thread of the launch's real grid runs on the CPU),
  plus ``px_run_<entry>`` wrappers that launch one PTX entry point with a caller's grid
  (its input pointers as an array, in ``abi.kernel_inputs`` order: AdaPool's X, Beta;
  AdaUnpool's X, MaskEdscw, MaskEm, Beta).
* ``cupy``: a fake CuPy installed as ``sys.modules["cupy"]``. Its ``RawModule`` follows
  CuPy 13's signature and rules, read from cupy/_core/raw.pyx (RawModule.__init__,
  get_function, _get_raw_module; github.com/cupy/cupy): keyword-only ``code=`` or
  ``path=`` (exactly one, else TypeError); ``code=`` is CUDA C++ that NVRTC compiles at the
  first ``get_function`` (PTX text there fails to compile); ``path=`` is a cubin or PTX
  file the driver loads (cuModuleLoad), whose ``.entry`` names ``get_function`` finds.
  A kernel call checks its arguments against the PTX entry's parameters, then runs the
  emulated entry with the grid and block given. Arrays are host NumPy arrays.
* The library backend: the emulated build's C launchers (the same source as the GPU's).
* The torch backend: the torch ops' CUDA launch packing (poolexport/ops/_native.py:
  window geometry and scalars) on the emulated launchers; torch itself has no CUDA here,
  so the dispatch to that route is the one part not exercised. The adaPool family's torch
  ops are pure torch on every device: here they run on the CPU, so their torch rows check
  only the backend's plumbing (and the planted bug).

Planted bugs: ``FAKE_GPU_CORRUPT=library,ptx,torch`` (any subset) changes the last output
element of every launch on that route after the kernel ran, as a wrong kernel would;
``FAKE_GPU_OLD_DRIVER=1`` makes the library report a driver older than its runtime.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WINDOW_ARGS = ", ".join(f"a[{i}]" for i in range(20))
REDUCE_ARGS = ", ".join(f"a[{i}]" for i in range(8))
UNPOOL_ARGS = ", ".join(f"a[{i}]" for i in range(17))
BETA_ARGS = ", ".join(f"a[{i}]" for i in range(20, 25))
ENTRIES = {  # entry -> (element type, input pointers, the call's int32 arguments)
    "poolexport_soft_pool_f32": ("float", 1, f"{WINDOW_ARGS}, a[20]"),
    "poolexport_soft_pool_f16": ("__half", 1, f"{WINDOW_ARGS}, a[20]"),
    "poolexport_stochastic_pool_f32": ("float", 1, f"{WINDOW_ARGS}, a[20], a[21], a[22]"),
    "poolexport_stochastic_pool_f16": ("__half", 1, f"{WINDOW_ARGS}, a[20], a[21], a[22]"),
    "poolexport_reduce_soft_pool_f32": ("float", 1, f"{REDUCE_ARGS}, a[8]"),
    "poolexport_reduce_soft_pool_f16": ("__half", 1, f"{REDUCE_ARGS}, a[8]"),
    "poolexport_reduce_stochastic_pool_f32": ("float", 1, f"{REDUCE_ARGS}, a[8], a[9], a[10]"),
    "poolexport_reduce_stochastic_pool_f16": ("__half", 1, f"{REDUCE_ARGS}, a[8], a[9], a[10]"),
    "poolexport_edscw_pool_f32": ("float", 1, WINDOW_ARGS),
    "poolexport_edscw_pool_f16": ("__half", 1, WINDOW_ARGS),
    "poolexport_idw_pool_f32": ("float", 1, WINDOW_ARGS),
    "poolexport_idw_pool_f16": ("__half", 1, WINDOW_ARGS),
    "poolexport_ada_pool_f32": ("float", 2, f"{WINDOW_ARGS}, {BETA_ARGS}"),
    "poolexport_ada_pool_f16": ("__half", 2, f"{WINDOW_ARGS}, {BETA_ARGS}"),
    "poolexport_ada_unpool_f32": ("float", 4, UNPOOL_ARGS),
    "poolexport_ada_unpool_f16": ("__half", 4, UNPOOL_ARGS),
}
# the library's C launchers (launch.h: int codes, input pointers, Y, p, stream) ->
# (int codes, input pointers)
LAUNCHERS = {"poolexport_cuda_launch_window": (2, 1), "poolexport_cuda_launch_reduce": (2, 1),
             "poolexport_cuda_launch_ada": (2, 2), "poolexport_cuda_launch_ada_unpool": (1, 4)}
OLD_DRIVER = ("the CUDA driver supports CUDA 12.4 but this library was built with the CUDA 13.0 runtime: "
              "update the driver or rebuild poolexport with this machine's CUDA toolkit")


def _wrappers() -> str:
    runs = "\n".join(
        f'PX_EXPORT void px_run_{name}(unsigned g, unsigned b, const void* const* in, const int32_t* a, void* Y) {{\n'
        f'  px_emulated_launch({name}, dim3(g), dim3(b))('
        + "".join(f"(const {t}*)in[{i}], " for i in range(n)) + f'{args}, ({t}*)Y);\n}}'
        for name, (t, n, args) in ENTRIES.items())
    return ('#include <stdlib.h>\n#include "cuda_runtime.h"\n#include "cuda_fp16.h"\n#include "poolexport/kernel_abi.h"\n'
            + runs + '\nPX_EXPORT const char* poolexport_cuda_version_error(void) {\n'
            + f'  return getenv("FAKE_GPU_OLD_DRIVER") ? "{OLD_DRIVER}" : nullptr;\n}}\n')


def build_library(out_dir: Path | None = None) -> Path:
    """The emulated kernels' shared library (cached by the sources' hash)."""
    from test_kernels_emulated import SHIM_FP16, SHIM_RUNTIME

    src = ROOT / "custom_ops"
    h = hashlib.sha256((SHIM_RUNTIME + SHIM_FP16 + _wrappers()).encode())
    # every .cu: kernels.cu includes ada_kernels.cu
    for p in sorted([*(src / "cuda").glob("*.cu"), *(src / "include" / "poolexport").glob("*.h"),
                     *(src / "cuda").glob("*.h")]):
        h.update(p.read_bytes())
    d = out_dir or Path(tempfile.gettempdir()) / f"poolexport-fake-gpu-{h.hexdigest()[:16]}"
    so = d / "libfakegpu.so"
    if so.is_file():
        return so
    d.mkdir(parents=True, exist_ok=True)
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME)
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    (d / "entries.cc").write_text(_wrappers())
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler for the emulated kernels")
    tmp = d / f"libfakegpu.{os.getpid()}.so"
    # entries.cc is appended to kernels.cu's translation unit: the entries are static there
    (d / "all.cc").write_text(f'#include "{src / "cuda" / "kernels.cu"}"\n#include "entries.cc"\n')
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-DPOOLEXPORT_HOST_EMULATION", f"-I{d}",
           f"-I{src / 'include'}", f"-I{src / 'cuda'}", str(d / "all.cc"), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the emulated kernels failed:\n{proc.stderr[-3000:]}")
    os.replace(tmp, so)
    return so


def _corrupted(route: str) -> bool:
    return route in os.environ.get("FAKE_GPU_CORRUPT", "").split(",")


def _corrupt(y: np.ndarray) -> None:
    if y.size:
        y.flat[-1] = y.flat[-1] * 1.5 + 1


# ------------------------------------------------------------------ fake CuPy 13
class CompileException(Exception):
    pass


class CUDADriverError(RuntimeError):
    pass


_PTX_DIRECTIVES = (".version", ".target", ".address_size", ".visible .entry", ".entry")


class RawKernel:
    def __init__(self, lib, name: str, params: list[str]):
        self._lib, self.name, self.params = lib, name, params

    def __call__(self, grid, block, args, **kwargs):
        """CuPy 13: ``__call__(grid, block, args, *, shared_mem=0)``; grid, block: tuples."""
        if set(kwargs) - {"shared_mem", "enable_cooperative_groups"}:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        if not (isinstance(grid, tuple) and isinstance(block, tuple) and 1 <= len(grid) <= 3 and 1 <= len(block) <= 3):
            raise TypeError("grid and block must be tuples of up to 3 ints")
        if not 1 <= grid[0] <= 2**31 - 1 or not 1 <= block[0] <= 1024 or any(v != 1 for v in (*grid[1:], *block[1:])):
            raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: invalid argument (grid or block)")
        args = tuple(args)
        if len(args) != len(self.params):
            raise CUDADriverError(f"{self.name}: {len(args)} arguments for {len(self.params)} PTX parameters")
        arrays, ints = [], []
        for a, t in zip(args, self.params):
            if t == "u64":
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: a pointer parameter got {type(a).__name__}")
                arrays.append(a)
            elif t in ("u32", "s32"):
                if not isinstance(a, (np.int32, np.uint32)):  # CuPy passes a Python int as 8 bytes
                    raise TypeError(f"{self.name}: a 32-bit parameter got {type(a).__name__}")
                ints.append(int(a))
            else:
                raise TypeError(f"{self.name}: PTX parameter type .{t} unknown to the fake")
        *inputs, y = arrays
        a32 = (ctypes.c_int32 * len(ints))(*ints)
        ptrs = (ctypes.c_void_p * len(inputs))(*[x.ctypes.data for x in inputs])
        getattr(self._lib, f"px_run_{self.name}")(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), ptrs, a32,
                                                  ctypes.c_void_p(y.ctypes.data))
        if _corrupted("ptx"):
            _corrupt(y)


class RawModule:
    """CuPy 13's ``RawModule`` (cupy/_core/raw.pyx) over the emulated kernels."""

    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if name_expressions is not None and code is None:
            raise ValueError("need CUDA C++ code for the requested kernels")
        if jitify and code is None:
            raise ValueError("Jitify does not support precompiled objects")
        self.code, self.file_path = code, path
        self.options = tuple(options) if code is not None else ()
        self.backend = backend if code is not None else "nvcc"
        self._entries = None

    def _module(self):
        from poolexport.tensorrt import ptx

        if self._entries is None:
            if self.code is not None:  # NVRTC compiles CUDA C++ (compile_with_cache)
                if any(line.lstrip().startswith(_PTX_DIRECTIVES) for line in self.code.splitlines()):
                    raise CompileException("nvrtc: error: this is PTX, not CUDA C++ (expected a declaration)")
                raise CompileException("the fake GPU compiles no CUDA C++")
            text = Path(self.file_path).read_text()  # cuModuleLoad: a PTX (or cubin) file
            if ".entry" not in text:
                raise CUDADriverError("CUDA_ERROR_INVALID_IMAGE: device kernel image is invalid")
            self._entries = ptx.ptx_entries(text)
        return self._entries

    def get_function(self, name: str) -> RawKernel:
        entries = self._module()
        if name not in entries:
            raise CUDADriverError("CUDA_ERROR_NOT_FOUND: named symbol not found")
        return RawKernel(FakeDevice.lib(), name, entries[name])


def make_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__version__ = "13.3.0+fake"
    cp.RawModule = RawModule
    cp.asarray = lambda a: np.array(a, copy=True)
    cp.asnumpy = lambda a: np.array(a, copy=True)
    cp.full = lambda shape, fill, dtype=None: np.full(shape, fill, dtype=dtype)
    cp.empty_like = np.empty_like
    cp.copyto = np.copyto
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, deviceSynchronize=lambda: None,
                                    getDeviceProperties=lambda i: {"name": b"fake GPU (CPU emulation)"})
    cp.cuda = types.SimpleNamespace(runtime=runtime, compiler=types.SimpleNamespace(CompileException=CompileException),
                                    driver=types.SimpleNamespace(CUDADriverError=CUDADriverError))
    return cp


# ------------------------------------------------------------------ the device layer
class _Library:
    """The emulated library as LibraryBackend sees it; launches on a corrupted route
    change their output afterwards."""

    def __init__(self, lib, arrays):
        self._lib, self._arrays = lib, arrays
        for name, (codes, inputs) in LAUNCHERS.items():
            setattr(self, name, self._launcher(getattr(lib, name), codes + inputs))

    def _launcher(self, f, y_at):
        def launch(*args):
            rc = f(*args)
            if _corrupted("library"):
                _corrupt(self._arrays[args[y_at]])
            return rc

        return launch

    def __getattr__(self, name):
        return getattr(self._lib, name)


class FakeDevice:
    """The self-check's device layer (poolexport.selfcheck.CudaDevice) on the CPU."""

    bench_shapes = [(2, 4, 16, 16)]
    _lib = None

    @classmethod
    def lib(cls):
        if cls._lib is None:
            path = os.environ.get("FAKE_GPU_LIBRARY") or str(build_library())
            lib = ctypes.CDLL(path)
            i, ptr, p = ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
            for name, (codes, inputs) in LAUNCHERS.items():
                getattr(lib, name).argtypes = [i] * codes + [ptr] * (inputs + 1) + [p, ptr]
                getattr(lib, name).restype = ctypes.c_int
            for name in ENTRIES:
                getattr(lib, f"px_run_{name}").argtypes = [ctypes.c_uint, ctypes.c_uint,
                                                           ctypes.POINTER(ctypes.c_void_p), p, ctypes.c_void_p]
            cls._lib = lib
        return cls._lib

    def __init__(self):
        self.lib()
        self._arrays = {}  # device pointer -> array, for the planted corruption
        sys.modules["cupy"] = make_cupy()

    def name(self):
        return "fake GPU (CPU emulation of the CUDA kernels)"

    def torch_ready(self):
        pass

    def library(self):
        return _Library(self.lib(), self._arrays)

    def to_device(self, x_np):
        a = np.array(x_np, copy=True)
        self._arrays[a.ctypes.data] = a
        return a

    def nan_like_output(self, shape, like):
        return self.to_device(np.full(shape, np.nan, dtype=like.dtype))

    def ptr(self, a):
        return a.ctypes.data

    def stream(self):
        return None

    def to_host(self, a):
        return np.array(a, copy=True)

    def sync(self):
        pass

    def copy_seconds(self, x_np, iters):
        import time

        src, dst = np.array(x_np), np.empty_like(x_np)
        t0 = time.perf_counter()
        for _ in range(iters):
            np.copyto(dst, src)
        return (time.perf_counter() - t0) / max(iters, 1)

    def cupy(self):
        return sys.modules["cupy"]

    def torch_op(self, op, inputs, a):
        """The torch ops' CUDA forward launch (_native._cuda_window / _cuda_reduce packing);
        the adaPool family's ops are pure torch, run here on CPU tensors."""
        from poolexport._window import make_window_spec, reduce_layout
        from poolexport.ops import _native
        from poolexport.selfcheck import _torch_ref

        lib = self.lib()
        x = inputs[0]
        dt = int(x.dtype == np.float16)
        if op in ("EdscwPool", "IdwPool", "AdaPool", "AdaUnpool"):
            import torch

            y = _torch_ref(op, [torch.from_numpy(i) for i in inputs], a).numpy()
            rc = 0
        elif op in ("SoftPool", "StochasticPool"):
            code = _native.SOFT if op == "SoftPool" else (_native.SAMPLE if a.get("mode") == "sample" else _native.EXPECTATION)
            k = x.ndim - 2
            spec = make_window_spec(op, k, a["kernel_shape"], a.get("strides") or [1] * k, a.get("pads") or 0,
                                    a.get("dilations") or 1, bool(a.get("ceil_mode", 0)), a.get("auto_pad", "NOTSET"))
            n, c, *spatial = x.shape
            geom, out = _native._window_geometry(spec, n, c, tuple(spatial))
            p = (ctypes.c_int32 * 23)(*list(geom), *_native._scalars(code, a.get("beta", 1.0), a.get("seed", 0)))
            y = np.full((n, c, *out), np.nan, dtype=x.dtype)
            rc = lib.poolexport_cuda_launch_window(int(code != _native.SOFT), dt, x.ctypes.data, y.ctypes.data, p, None)
        else:
            code = (_native.SOFT if op == "ReduceSoftPool"
                    else (_native.SAMPLE if a.get("mode") == "sample" else _native.EXPECTATION))
            reduced, _, _, out_shape = reduce_layout(tuple(x.shape), a["axes"], bool(a["keepdims"]), op)
            dims, mask = _native._reduce_geometry(tuple(x.shape), tuple(reduced))
            p = (ctypes.c_int32 * 11)(x.ndim, *list(dims), mask,
                                      *_native._scalars(code, a.get("beta", 1.0), a.get("seed", 0)))
            y = np.full(out_shape, np.nan, dtype=x.dtype)
            rc = lib.poolexport_cuda_launch_reduce(int(code != _native.SOFT), dt, x.ctypes.data, y.ctypes.data, p, None)
        if rc:
            raise RuntimeError(f"{op}: launch failed ({rc})")
        if _corrupted("torch"):
            _corrupt(y)
        return y
