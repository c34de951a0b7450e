"""Rules every GPU test follows, checked on the CPU (no GPU needed):

* it skips only through the ``gpu`` marker (tests/conftest.py), so that
  ``POOLEXPORT_REQUIRE_GPU=1`` turns a missing GPU stack into a failure: no module-level
  ``pytest.skip``, a ``pytest.mark.gpu`` in ``pytestmark``;
* its references are independent: a static taint check over each file's AST finds no
  comparison whose two sides both come from a computation on device data, and no
  ``ref*`` / ``expected*`` / ``want*`` name bound to one (device data: ``.cuda()``,
  ``device=...``, ``.to("cuda")``, ``cupy.*``; ``.cpu()``, ``.numpy()``, ``cupy.asnumpy``
  bring data back; a computation is any other call that takes device data);
* ``POOLEXPORT_REQUIRE_GPU=1 pytest tests/test_torch_cuda.py`` fails on a machine without
  a GPU instead of skipping.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
GPU_TEST_FILES = ["test_kernels_cuda.py", "test_torch_cuda.py", "test_tensorrt_gpu.py", "test_ort_cuda.py",
                  "test_selfcheck.py", "test_kernels_cuda_ada.py", "test_ort_cuda_ada.py",
                  "test_tensorrt_gpu_ada.py", "test_ada_cuda_torch.py"]
CHECKED_FOR_REFERENCES = [TESTS / f for f in GPU_TEST_FILES] + [ROOT / "poolexport" / "selfcheck.py"]

# calls that move or reshape data, not compute with it
_MOVES = {"cpu", "cuda", "numpy", "item", "tolist", "double", "float", "half", "to", "detach", "clone", "contiguous",
          "astype", "asnumpy", "asarray", "from_numpy", "reshape", "view", "requires_grad_", "copy_", "full", "empty",
          "zeros", "zeros_like", "empty_like", "full_like", "ones", "rand", "randn", "data_ptr", "synchronize"}
_BACK = {"cpu", "numpy", "item", "tolist", "asnumpy"}  # device -> host
_COMPARE = {"equal", "assert_close", "assert_allclose", "assert_array_equal", "array_equal", "allclose", "_expect_close",
            "_compare"}
_REF_PREFIXES = ("ref", "expected", "want")
_METADATA = {"shape", "dtype", "device", "ndim", "is_cuda"}  # describe data, carry none


def _attr(func):
    return func.attr if isinstance(func, ast.Attribute) else (func.id if isinstance(func, ast.Name) else None)


class _Flow:
    """Per function: names holding device data (``on``) and names holding a result computed
    from device data (``result``)."""

    def __init__(self):
        self.on, self.result = set(), set()

    def _cuda_call(self, c: ast.Call) -> bool:
        name = _attr(c.func)
        if name == "cuda":
            return True
        if isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name) and c.func.value.id == "cupy":
            return name != "asnumpy"
        for kw in c.keywords:
            if kw.arg == "device" and not (isinstance(kw.value, ast.Constant) and kw.value.value == "cpu"):
                return True
        if name == "to":
            return any(isinstance(a, ast.Constant) and str(a.value).startswith("cuda") for a in c.args) or any(
                isinstance(a, ast.Name) and a.id == "device" for a in c.args)
        return False

    def on_device(self, e) -> bool:
        if isinstance(e, ast.Attribute) and e.attr in _METADATA:
            return False
        if isinstance(e, ast.Name):
            return e.id in self.on
        if isinstance(e, ast.Call):
            if _attr(e.func) in _BACK:
                return False
            if self._cuda_call(e):
                return True
        return any(self.on_device(ch) for ch in ast.iter_child_nodes(e) if not isinstance(ch, ast.Lambda))

    def computed(self, e) -> bool:
        """Whether e holds (or is) a result computed from device data."""
        if isinstance(e, ast.Attribute) and e.attr in _METADATA:
            return False
        if isinstance(e, ast.Name):
            return e.id in self.result
        if isinstance(e, ast.Attribute) and e.attr == "grad" and self.on_device(e.value):
            return True
        if isinstance(e, ast.Call) and _attr(e.func) not in _MOVES:
            receiver = [e.func.value] if isinstance(e.func, ast.Attribute) else []
            if any(self.on_device(a) for a in [*receiver, *e.args, *(k.value for k in e.keywords)]):
                return True
        return any(self.computed(ch) for ch in ast.iter_child_nodes(e) if not isinstance(ch, ast.Lambda))


def _targets(t):
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, (ast.Tuple, ast.List)):
        return [n for el in t.elts for n in _targets(el)]
    return []


def reference_violations(source: str, filename: str = "<test>") -> list[str]:
    tree = ast.parse(source)
    out = []
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        flow = _Flow()
        body = scope.body
        for node in _in_order(body):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                names = [n for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) for n in _targets(t)]
                on, computed = flow.on_device(node.value), flow.computed(node.value)
                for n in names:
                    (flow.on.add if on else flow.on.discard)(n)
                    (flow.result.add if computed else flow.result.discard)(n)
                    if computed and n.lower().startswith(_REF_PREFIXES):
                        out.append(f"{filename}:{node.lineno}: reference {n!r} computed from device data")
            if isinstance(node, ast.Call) and _attr(node.func) in _COMPARE and len(node.args) >= 2:
                if flow.computed(node.args[0]) and flow.computed(node.args[1]):
                    out.append(f"{filename}:{node.lineno}: both sides of {_attr(node.func)}() computed from device data")
    return out


def _in_order(body):
    """Statements and the calls inside them, in source order, not descending into nested
    function definitions (each is its own scope)."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                yield node
        yield stmt
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(stmt, field, None)
            if isinstance(inner, list) and inner and not isinstance(stmt, ast.Lambda):
                yield from _in_order(inner)


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", GPU_TEST_FILES)
def test_gpu_files_skip_only_through_the_marker(name):
    source = (TESTS / name).read_text()
    assert "allow_module_level" not in source, f"{name}: a module-level skip bypasses POOLEXPORT_REQUIRE_GPU"
    tree = ast.parse(source)
    marks = [n for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)]
    has_module_marker = any("pytest.mark.gpu" in ast.unparse(n.value) for n in marks)
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    all_marked = all(any("pytest.mark.gpu" in ast.unparse(d) for d in f.decorator_list) for f in tests)
    assert has_module_marker or all_marked, f"{name}: GPU tests without the gpu marker"


@pytest.mark.parametrize("path", CHECKED_FOR_REFERENCES, ids=lambda p: p.name)
def test_no_reference_computed_on_the_device(path):
    assert reference_violations(path.read_text(), path.name) == []


def test_the_reference_check_finds_same_device_references():
    """What the GPU kernel test used to do, and two variants, are caught; CPU references are not."""
    bad_old = '''
def test_old(lib):
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    y = launch_window(lib, 0, x, a, bits)
    ref = torch.ops.poolexport.soft_pool(x, *_targs(a, k), beta)
    torch.testing.assert_close(y.double(), ref.double())
'''
    bad_inline = '''
def test_inline():
    x = torch.rand(4, 8).cuda()
    assert torch.equal(fn(x).cpu(), fn(x).cpu())
'''
    bad_grad = '''
def test_grad(fn, x64):
    x = x64.to("cuda").requires_grad_()
    fn(x).sum().backward()
    xr = x64.cuda().requires_grad_()
    expected = fn(xr)
'''
    good = '''
def test_good(fn, x64):
    x = x64.cuda().requires_grad_()
    y = fn(x)
    ref_y = fn(x64)
    ref_back = fn(x.detach().cpu())
    torch.testing.assert_close(y.cpu(), ref_y)
    torch.testing.assert_close(x.grad.cpu(), ref_back)
'''
    assert len(reference_violations(bad_old)) >= 1
    assert len(reference_violations(bad_inline)) >= 1
    assert len(reference_violations(bad_grad)) >= 1
    assert reference_violations(good) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs these tests for real")
def test_require_gpu_turns_the_torch_cuda_skips_into_failures():
    env = {k: v for k, v in os.environ.items() if k != "POOLEXPORT_REQUIRE_GPU"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "test_torch_cuda.py")]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert plain.returncode == 0 and " skipped" in plain.stdout and "failed" not in plain.stdout, plain.stdout[-2000:]
    required = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, POOLEXPORT_REQUIRE_GPU="1"), cwd=ROOT,
                              timeout=600)
    assert required.returncode == 1, required.stdout[-2000:]
    assert " skipped" not in required.stdout.splitlines()[-1], required.stdout[-2000:]
    assert "POOLEXPORT_REQUIRE_GPU=1 but this GPU test skipped" in required.stdout
