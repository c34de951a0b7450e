"""Property test: thousands of random attribute/shape cases through the custom-op library.

Run in a subprocess so that a crash (segfault, abort) fails the test instead of killing
pytest. Each case (valid or not: zero strides, oversized kernels, negative pads,
mismatched lengths, wrong ranks, empty tensors, bad modes and axes) must either return
an ORT error status or an output; when the PyTorch op accepts the same case the
library must too and agree with it (sampled picks bit for bit), and when the PyTorch op
rejects it the library must return an error. The same script runs under AddressSanitizer
in test_ort_asan.py (``--no-torch``: only the library, no torch in that process).
"""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.abspath(__file__)


def _script(examples: int, use_torch: bool, seed: int) -> int:
    import numpy as np
    import onnxruntime as ort
    from hypothesis import HealthCheck, given, seed as hseed, settings
    from hypothesis import strategies as st
    from onnx import AttributeProto, TensorProto, helper

    from poolexport.ort import get_library_path

    if use_torch:
        import torch

        import poolexport.ops  # noqa: F401

    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    so.log_severity_level = 4
    so.intra_op_num_threads = 1  # a pool per session costs more than these tiny cases
    counts = {"ok": 0, "error": 0}

    def run(op, elem, attrs, x):
        node = helper.make_node(op, ["X"], ["Y"], domain="poolexport")
        for key, v in attrs.items():  # typed explicitly: empty lists are still INTS
            node.attribute.append(helper.make_attribute(key, v, attr_type=AttributeProto.INTS) if isinstance(v, list)
                                  else helper.make_attribute(key, v))
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", elem, None)],
                              [helper.make_tensor_value_info("Y", elem, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)], ir_version=10)
        try:
            return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0], None
        except Exception as e:  # an error status is a fine answer; a crash is not
            msg = str(e)
            if os.environ.get("PX_FUZZ_DEBUG"):
                print("ERR", msg.split("Status Message: ")[-1][:90].split(":")[:2])
            assert op in msg, msg
            return None, msg

    often = lambda n: st.sampled_from([True] * n + [False])  # noqa: E731 (unbiased, unlike integers(0, n))
    ints = lambda lo, hi, n: st.lists(st.integers(lo, hi), min_size=n[0], max_size=n[1])  # noqa: E731

    @st.composite
    def windowed(draw):
        k = draw(st.integers(1, 3))
        rank = draw(st.sampled_from([k + 2] * 12 + [k + 1, k + 3]))
        shape = [draw(st.integers(0, 3)), draw(st.integers(1, 3))] + [
            draw(st.integers(0, 9) if not draw(often(15)) else st.integers(3, 9)) for _ in range(max(rank - 2, 0))]
        shape = shape[:rank]
        a = {"kernel_shape": draw(ints(1, 4, (k, k)) if draw(often(20)) else ints(0, 5, (0, 4)))}
        if draw(st.booleans()):
            a["strides"] = draw(ints(1, 4, (k, k)) if draw(often(15)) else ints(0, 3, (1, 4)))
        if draw(st.booleans()):
            a["pads"] = draw(ints(0, 4, (2 * k, 2 * k)) if draw(often(15)) else ints(-1, 6, (1, 6)))
        if draw(st.booleans()):
            a["dilations"] = draw(ints(1, 3, (k, k)) if draw(often(15)) else ints(0, 2, (1, 4)))
        if draw(st.booleans()):
            a["ceil_mode"] = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
        if draw(st.booleans()):
            a["auto_pad"] = draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"] * 3 + ["SAME"]))
        return shape, a

    @st.composite
    def reduced(draw):
        rank = draw(st.sampled_from([0] + list(range(1, 7)) * 3 + [7]))
        shape = [draw(st.integers(0, 4)) for _ in range(rank)]
        a = {}
        if draw(st.booleans()):
            a["axes"] = draw(st.lists(st.integers(-rank - 1, rank), min_size=0, max_size=rank + 1, unique=draw(often(6))))
        if draw(st.booleans()):
            a["keepdims"] = draw(st.sampled_from([0, 1] * 6 + [5]))
        return shape, a

    @settings(max_examples=examples, deadline=None, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        op = data.draw(st.sampled_from(["SoftPool", "StochasticPool", "ReduceSoftPool", "ReduceStochasticPool"]))
        shape, a = data.draw(windowed() if not op.startswith("Reduce") else reduced())
        if "Soft" in op and data.draw(st.booleans()):
            a["beta"] = data.draw(st.sampled_from([0.0, 1.0, -2.0, 30.0]))
        if "Stochastic" in op:
            a["mode"] = data.draw(st.sampled_from(["expectation", "sample"] * 8 + ["nope"]))
            a["seed"] = data.draw(st.integers(-(2**63), 2**63 - 1))
        half = data.draw(st.booleans())
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        scale = data.draw(st.sampled_from([1.0, 100.0, 1e4]))
        x = np.asarray(rng.standard_normal(shape) * scale, dtype=np.float16 if half else np.float32)
        y, err = run(op, TensorProto.FLOAT16 if half else TensorProto.FLOAT, a, x)
        counts["error" if err else "ok"] += 1
        if y is not None:
            assert np.isfinite(y).all() or not np.isfinite(x).all(), (op, a, shape)
        if not use_torch:
            return
        xt = torch.from_numpy(x)
        try:
            if op == "SoftPool" or op == "StochasticPool":
                k = len(a["kernel_shape"])
                # ONNX default strides = 1 (the torch op's empty strides mean stride = kernel)
                strides = a.get("strides", [1] * k)
                common = [a["kernel_shape"], strides, a.get("pads", []), a.get("dilations", []),
                          bool(a.get("ceil_mode", 0)), a.get("auto_pad", "NOTSET")]
                if a.get("ceil_mode", 0) not in (0, 1):
                    raise ValueError("ceil_mode")
                if not 1 <= k <= 3:
                    raise ValueError("kernel_shape")
                ref = (torch.ops.poolexport.soft_pool(xt, *common, a.get("beta", 1.0)) if op == "SoftPool"
                       else torch.ops.poolexport.stochastic_pool(xt, *common, a["mode"], a["seed"]))
            else:
                if a.get("keepdims", 1) not in (0, 1):
                    raise ValueError("keepdims")
                if x.ndim == 0 or x.size == 0:
                    raise ValueError("empty")  # torch reductions of empty windows are undefined
                axes = a.get("axes") or None
                ref = (torch.ops.poolexport.reduce_soft_pool(xt, axes, bool(a.get("keepdims", 1)), a.get("beta", 1.0))
                       if op == "ReduceSoftPool"
                       else torch.ops.poolexport.reduce_stochastic_pool(xt, axes, bool(a.get("keepdims", 1)), a["mode"], a["seed"]))
        except (ValueError, RuntimeError, IndexError) as e:
            if op.startswith("Reduce") and str(e) == "empty":
                return
            assert err is not None, f"library accepted what torch rejects: {op} {a} {shape}: {e}"
            return
        assert err is None, f"library rejected what torch accepts: {op} {a} {shape}: {err}"
        ref = ref.numpy()
        assert y.shape == ref.shape, (op, a, shape, y.shape, ref.shape)
        if a.get("mode") == "sample":
            np.testing.assert_array_equal(y, ref)
        else:
            tol = 2e-3 if half else 2e-5
            np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), rtol=tol, atol=tol * max(1.0, float(np.abs(x).max(initial=0))))

    hseed(seed)(check)()
    print(f"cases ok={counts['ok']} error={counts['error']}")
    return counts["ok"] + counts["error"]


def run_script(examples: int, use_torch: bool, env=None, timeout=600):
    cmd = [sys.executable, HERE, str(examples)] + ([] if use_torch else ["--no-torch"])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_random_cases_never_crash_and_agree_with_torch():
    proc = run_script(2000, use_torch=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("cases ")][-1]
    ok, error = (int(p.split("=")[1]) for p in line.split()[1:])
    assert ok + error >= 2000 and ok > 500 and error > 200, line


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    _script(n, "--no-torch" not in sys.argv, seed=20261124)
