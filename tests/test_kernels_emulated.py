"""The CUDA kernel source, run on the CPU: custom_ops/cuda/kernels.cu compiled as C++
against a small shim of the CUDA headers (POOLEXPORT_HOST_EMULATION), each launch run as
one thread of a one-block grid (the kernels loop grid-stride, so that thread visits every
output). This checks what a GPU-less machine can check of the CUDA code: the kernels'
index arithmetic, the launchers' argument order (the TensorRT ABI) and float16 handling,
against the PyTorch ops (sampled picks bit for bit). tests/test_kernels_cuda.py runs the
real thing on a GPU.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import poolexport.ops  # noqa: F401
from poolexport._window import make_window_spec, reduce_layout

ROOT = Path(__file__).resolve().parents[1]

SHIM_RUNTIME = r"""
#pragma once
#include <stdint.h>
#define __CUDACC__ 1
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
static const dim3 blockIdx(0, 0, 0), threadIdx(0, 0, 0), blockDim(1, 1, 1), gridDim(1, 1, 1);
typedef void* cudaStream_t;
typedef int cudaError_t;
static inline cudaError_t cudaGetLastError() { return 0; }
static inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
"""
SHIM_FP16 = r"""
#pragma once
#include "cuda_runtime.h"
#include "poolexport/common.h"
struct __half { uint16_t bits; };
static inline float __half2float(__half h) { return poolexport::half_bits_to_float(h.bits); }
static inline __half __float2half_rn(float f) { return __half{poolexport::float_to_half_bits(f)}; }
"""


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("emu")
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME)
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    so = d / "libemu.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-x", "c++", "-DPOOLEXPORT_HOST_EMULATION",
           f"-I{d}", f"-I{ROOT / 'custom_ops' / 'include'}", f"-I{ROOT / 'custom_ops' / 'cuda'}",
           str(ROOT / "custom_ops" / "cuda" / "kernels.cu"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = ctypes.CDLL(str(so))
    for name in ("poolexport_cuda_launch_window", "poolexport_cuda_launch_reduce"):
        f = getattr(lib, name)
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p]
        f.restype = ctypes.c_int
    return lib


def _i32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _beta_bits(beta):
    return _i32(np.array([beta], np.float32).view(np.int32)[0])


def launch_window(lib, op, x, a, scalar, seed=0):
    k = x.ndim - 2
    spec = make_window_spec("test", k, a["kernel_shape"], a.get("strides") or [1] * k, a.get("pads") or 0,
                            a.get("dilations") or 1, a.get("ceil_mode", False), a.get("auto_pad", "NOTSET"))
    out, begin = spec.resolve(x.shape[2:])
    pad3 = lambda v, fill: [fill] * (3 - k) + list(v)  # noqa: E731
    p = [x.shape[0], x.shape[1], *pad3(x.shape[2:], 1), *pad3(out, 1), *pad3(spec.kernel_shape, 1), *pad3(spec.strides, 1),
         *pad3(spec.dilations, 1), *pad3(begin, 0), scalar, _i32(seed), _i32(seed >> 32)]
    x = np.ascontiguousarray(x)
    y = np.full((*x.shape[:2], *out), np.nan, dtype=x.dtype)
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    assert lib.poolexport_cuda_launch_window(op, int(x.dtype == np.float16), x.ctypes.data, y.ctypes.data, arr, None) == 0
    return y


def launch_reduce(lib, op, x, axes, keepdims, scalar, seed=0):
    red, _, _, out_shape = reduce_layout(tuple(x.shape), axes, keepdims, "test")
    dims = [1] * (6 - x.ndim) + list(x.shape)
    mask = sum(1 << (6 - x.ndim + a) for a in red)
    p = [x.ndim, *dims, mask, scalar, _i32(seed), _i32(seed >> 32)]
    x = np.ascontiguousarray(x)
    y = np.full(out_shape, np.nan, dtype=x.dtype)
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    assert lib.poolexport_cuda_launch_reduce(op, int(x.dtype == np.float16), x.ctypes.data, y.ctypes.data, arr, None) == 0
    return y


CASES = [
    ((2, 3, 11, 12), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 2, 12, 11), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1], dilations=[2, 3])),
    ((2, 2, 11, 10), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=True)),
    ((2, 2, 11, 10), dict(kernel_shape=[4, 3], strides=[3, 2], auto_pad="SAME_UPPER")),
    ((2, 3, 17), dict(kernel_shape=[5], strides=[3], pads=[2, 1], ceil_mode=True)),
    ((1, 2, 5, 7, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 1, 0, 1, 1])),
]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float16: dict(rtol=2e-3, atol=2e-3)}


def _targs(a, k):
    return [a["kernel_shape"], a.get("strides") or [1] * k, a.get("pads") or [], a.get("dilations") or [],
            bool(a.get("ceil_mode", False)), a.get("auto_pad", "NOTSET")]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,a", CASES)
def test_emulated_windowed_kernels_match_torch(emu, shape, a, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    xt = torch.from_numpy(x)
    k = x.ndim - 2
    for beta in (1.0, 0.0, -2.0):
        y = launch_window(emu, 0, x, a, _beta_bits(beta))
        ref = torch.ops.poolexport.soft_pool(xt, *_targs(a, k), beta).numpy()
        np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), **TOL[dtype])
    y = launch_window(emu, 1, x, a, 0)
    ref = torch.ops.poolexport.stochastic_pool(xt, *_targs(a, k), "expectation", 0).numpy()
    np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), **TOL[dtype])
    for seed in (0, 4242, -(2**40) - 7):
        y = launch_window(emu, 1, x, a, 1, seed)
        np.testing.assert_array_equal(y, torch.ops.poolexport.stochastic_pool(xt, *_targs(a, k), "sample", seed).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,axes,keepdims", [((2, 5, 3, 4), [1], True), ((2, 3, 4, 5), [2, 3], False),
                                                 ((2, 3, 4, 2, 3), [0, 2, 4], True), ((3, 4, 5), None, True)])
def test_emulated_reduce_kernels_match_torch(emu, shape, axes, keepdims, dtype):
    x = (np.random.default_rng(2).standard_normal(shape) * 3).astype(dtype)
    xt = torch.from_numpy(x)
    y = launch_reduce(emu, 0, x, axes, keepdims, _beta_bits(1.5))
    ref = torch.ops.poolexport.reduce_soft_pool(xt, axes, keepdims, 1.5).numpy()
    np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), **TOL[dtype])
    y = launch_reduce(emu, 1, x, axes, keepdims, 0)
    ref = torch.ops.poolexport.reduce_stochastic_pool(xt, axes, keepdims, "expectation", 0).numpy()
    np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), **TOL[dtype])
    y = launch_reduce(emu, 1, x, axes, keepdims, 1, 77)
    np.testing.assert_array_equal(y, torch.ops.poolexport.reduce_stochastic_pool(xt, axes, keepdims, "sample", 77).numpy())
