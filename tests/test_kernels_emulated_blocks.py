"""The cooperative reduce kernels (several lanes per output, shared memory, __syncthreads)
run on the CPU with their real launch geometry: custom_ops/cuda/kernels.cu compiled as
C++20 against a shim that runs each block's 256 threads as std::threads meeting at a
std::barrier for __syncthreads, blocks one after another (so a `static` array serves as
the block's __shared__ memory). tests/test_kernels_emulated.py runs one thread per block,
which takes the one-thread-per-output path; this file covers 32 and 256 lanes per output,
against the torch ops, float32 and float16, and sample mode's sequential path.
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
from poolexport.tensorrt import shapes

ROOT = Path(__file__).resolve().parents[1]

SHIM_RUNTIME = r"""
#pragma once
#include <stdint.h>
#include <barrier>
#include <thread>
#include <vector>
#define __CUDACC__ 1
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
inline thread_local dim3 threadIdx(0, 0, 0), blockIdx(0, 0, 0);
inline dim3 blockDim(1, 1, 1), gridDim(1, 1, 1);
inline std::barrier<>* px_barrier = nullptr;
#define __syncthreads() px_barrier->arrive_and_wait()
#define __shared__ static
typedef void* cudaStream_t;
typedef int cudaError_t;
static inline cudaError_t cudaGetLastError() { return 0; }
static inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
template <class K> struct PxLaunch {
  K kernel; dim3 grid, block;
  template <class... A> void operator()(A... args) {
    gridDim = grid; blockDim = block;
    for (unsigned b = 0; b < grid.x; ++b) {
      std::barrier<> bar(block.x);
      px_barrier = &bar;
      std::vector<std::thread> threads;
      for (unsigned t = 0; t < block.x; ++t)
        threads.emplace_back([=, this] { blockIdx = dim3(b); threadIdx = dim3(t); kernel(args...); });
      for (auto& t : threads) t.join();
    }
  }
};
template <class K> PxLaunch<K> px_launch(K k, dim3 g, dim3 b) { return PxLaunch<K>{k, g, b}; }
#define PX_LAUNCH(kernel, grid, block, stream) px_launch(kernel, grid, block)
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
def launch_reduce(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("emu_blocks")
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME)
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    so = d / "libemu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-pthread", "-x", "c++",
           "-DPOOLEXPORT_HOST_EMULATION", f"-I{d}", f"-I{ROOT / 'custom_ops' / 'include'}",
           f"-I{ROOT / 'custom_ops' / 'cuda'}", str(ROOT / "custom_ops" / "cuda" / "kernels.cu"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip("the C++ compiler lacks C++20 <barrier>")
    assert proc.returncode == 0, proc.stderr[-4000:]
    f = ctypes.CDLL(str(so)).poolexport_cuda_launch_reduce
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32),
                  ctypes.c_void_p]
    f.restype = ctypes.c_int
    return f


# (shape, axes, keepdims, lanes per output in the soft/expectation modes)
CASES = [
    ((2, 3, 8, 6), [2, 3], 1, 32),
    ((2, 3, 40, 40), [2, 3], 0, 256),
    ((2, 5, 3, 11), [1, 3], 1, 32),  # two runs per window: axis 1 then the contiguous axis 3
    ((4, 2, 33), [0, 2], 0, 32),
    ((1, 1200), [1], 0, 256),
    ((2, 3, 5, 7), [1], 1, 1),  # innermost axis kept: a thread per output
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape,axes,keepdims,lanes", CASES)
def test_cooperative_reduce_matches_torch(launch_reduce, shape, axes, keepdims, lanes, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    xt = torch.from_numpy(x)
    tol = dict(rtol=2e-5, atol=6e-5) if dtype == np.float32 else dict(rtol=2e-3, atol=6e-3)
    for op, attrs, ref in (
        ("ReduceSoftPool", dict(beta=1.5), lambda: torch.ops.poolexport.reduce_soft_pool(xt, axes, bool(keepdims), 1.5)),
        ("ReduceStochasticPool", dict(mode="expectation"),
         lambda: torch.ops.poolexport.reduce_stochastic_pool(xt, axes, bool(keepdims), "expectation", 0)),
        ("ReduceStochasticPool", dict(mode="sample", seed=2**40 + 5),
         lambda: torch.ops.poolexport.reduce_stochastic_pool(xt, axes, bool(keepdims), "sample", 2**40 + 5)),
    ):
        a = dict(attrs, axes=axes, keepdims=keepdims)
        args, out_shape = shapes.kernel_args(op, list(shape), a)
        expected_lanes = 1 if a.get("mode") == "sample" else lanes
        assert shapes.launch_total(op, list(shape), a) == expected_lanes * int(np.prod(out_shape))
        y = np.full(out_shape, np.nan, dtype=dtype)
        p = (ctypes.c_int32 * len(args))(*args)
        assert launch_reduce(0 if op == "ReduceSoftPool" else 1, int(dtype == np.float16), x.ctypes.data,
                             y.ctypes.data, p, None) == 0
        expected = ref().numpy()
        if a.get("mode") == "sample":
            np.testing.assert_array_equal(y, expected)
        else:
            np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64), **tol)


def test_cooperative_soft_pool_stays_finite_for_huge_inputs(launch_reduce):
    x = (np.sign(np.random.default_rng(2).standard_normal((2, 2000))) * 3e4).astype(np.float32)
    x[0, 1500] = 3.3e4  # one maximum late in the window: every lane rescales
    args, out_shape = shapes.kernel_args("ReduceSoftPool", [2, 2000], dict(axes=[1], keepdims=0, beta=1.0))
    y = np.empty(out_shape, np.float32)
    p = (ctypes.c_int32 * len(args))(*args)
    assert launch_reduce(0, 0, x.ctypes.data, y.ctypes.data, p, None) == 0
    expected = torch.ops.poolexport.reduce_soft_pool(torch.from_numpy(x), [1], False, 1.0).numpy()
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, expected, rtol=2e-5)
