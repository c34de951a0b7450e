"""poolexport/tensorrt/abi.py against the C sources: parameter NAMES and order.

The PTX check (test_tensorrt_ptx.py) sees only types, and every scalar is an int32, so a
swapped pair (say strides and dilations) would pass it. Here the parameter lists of
kernel_abi.h's declarations and of kernels.cu's definitions, with the parameter macros
expanded, must equal the order in which the plugins pass their arguments.
"""
import re
from pathlib import Path

import pytest

from poolexport.tensorrt import abi, ptx

ROOT = ptx.custom_ops_dir()
pytestmark = pytest.mark.skipif(ROOT is None, reason="custom_ops/ sources not found (installed wheel)")


def _macros(text):
    out = {}
    for m in re.finditer(r"#define\s+(POOLEXPORT_\w+_PARAMS)\s+((?:.*\\\n)*.*)", text):
        out[m.group(1)] = re.findall(r"int32_t\s+(\w+)", m.group(2))
    return out


def _signatures(text, macros):
    sigs = {}
    for m in re.finditer(r"(?:POOLEXPORT_GLOBAL|__global__)\s+void\s+(poolexport_\w+)\s*\(([^)]*)\)", text):
        names = []
        for part in m.group(2).split(","):
            part = part.strip()
            names += macros[part] if part in macros else [re.findall(r"(\w+)\s*$", part)[0]]
        sigs[m.group(1)] = names
    return sigs


def test_header_declarations_match_abi_order():
    text = (ROOT / "include" / "poolexport" / "kernel_abi.h").read_text()
    macros = _macros(text)
    assert macros["POOLEXPORT_WINDOW_PARAMS"] == list(abi.WINDOW_PARAMS)
    assert macros["POOLEXPORT_REDUCE_PARAMS"] == list(abi.REDUCE_PARAMS)
    sigs = _signatures(text, macros)
    assert sorted(sigs) == sorted(abi.all_kernel_names())
    for op in abi.KERNELS:
        for dtype in abi.DTYPE_SUFFIX:
            assert sigs[abi.kernel_name(op, dtype)] == list(abi.kernel_params(op))


def test_kernel_definitions_match_abi_order():
    header = (ROOT / "include" / "poolexport" / "kernel_abi.h").read_text()
    text = "\n".join((ROOT / "cuda" / f).read_text() for f in ("kernels.cu", "ada_kernels.cu"))
    sigs = _signatures(text, _macros(header))
    for op in abi.KERNELS:
        for dtype in abi.DTYPE_SUFFIX:
            assert sigs[abi.kernel_name(op, dtype)] == list(abi.kernel_params(op))


def test_grid_constants_match_header():
    # kernel_abi.h takes them from limits.h, the one header of the kernels' numbers
    assert '#include "limits.h"' in (ROOT / "include" / "poolexport" / "kernel_abi.h").read_text()
    text = (ROOT / "include" / "poolexport" / "limits.h").read_text()
    assert int(re.search(r"#define POOLEXPORT_BLOCK (\d+)", text).group(1)) == abi.BLOCK
    assert int(re.search(r"#define POOLEXPORT_MAX_GRID (\d+)", text).group(1)) == abi.MAX_GRID
