"""The ``poolexport`` CLI's ``--dynamic`` flag on every input format: the exported ONNX
file's input and output dims (dim_value vs dim_param) must be what the flag asks for.

Formats (poolexport/cli.py, poolexport/_loading.py): a TorchScript archive (its input shape
stored in the ``poolexport.json`` extra file, or given with ``--input-shape``), a pickled
module (``--trust-pickle``, exported by dynamo or, with ``--exporter torchscript``, by the
TorchScript exporter), torch.export programs with no, batch-only, batch + height and fully
dynamic axes. Flags: absent (the default: batch,spatial; a program keeps its own), none
(any case), batch, spatial, batch,spatial (either order, spaces). Two models: a strided
pool (the output's spatial sizes are H/2: a name of their own when dynamic, the number
when not) and stride-1 "same" pools (the output's spatial dims follow the input's: the same
names ``height``/``width``, README "Dims are named ..."), plus 1-D and 3-D models for the
``length`` / ``depth`` names.

The in-process runs use ``--trust-pickle`` (cli.main loads and exports in this process) and
``--no-parity``; each takes 0.1 s (TorchScript exporter) to ~1.5 s (dynamo). The runs
through the contained child (no ``--trust-pickle``: a sandboxed subprocess that imports
torch) are marked ``slow``.
"""
from __future__ import annotations

import json

import onnx
import pytest
import torch

import poolexport.nn as pnn
from poolexport import cli

N, C, H, W = 2, 3, 8, 10
NAMES = {1: ["length"], 2: ["height", "width"], 3: ["depth", "height", "width"]}


def strided():
    return torch.nn.Sequential(torch.nn.Conv2d(C, 4, 3, padding=1), pnn.SoftPool2d(2)).eval()


def keeping(dims=2):
    soft = {1: pnn.SoftPool1d, 2: pnn.SoftPool2d, 3: pnn.SoftPool3d}[dims]
    sto = {1: pnn.StochasticPool1d, 2: pnn.StochasticPool2d, 3: pnn.StochasticPool3d}[dims]
    return torch.nn.Sequential(soft(3, 1, 1, beta=2.0), sto(3, 1, 1)).eval()


MODELS = {"strided": strided, "keeping": keeping}
OUT_CHANNELS = {"strided": 4, "keeping": C}


def out_spatial(model, spatial):
    return [s // 2 for s in spatial] if model == "strided" else list(spatial)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_dims")
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W)
    for name, make in MODELS.items():
        net = make()
        torch.save(net, d / f"{name}.pt")
        traced = torch.jit.trace(net, x)
        torch.jit.save(traced, d / f"{name}.ts", _extra_files={"poolexport.json": json.dumps({"input_shape": [N, C, H, W]})})
        torch.jit.save(traced, d / f"{name}.noshape.ts")
        batch = torch.export.Dim("b", min=2, max=64)
        h, w = (torch.export.Dim(n, min=4, max=64) for n in ("h", "w"))
        for suffix, dyn in (("static", None), ("batch", {0: batch}), ("batch_h", {0: batch, 2: h}),
                            ("all", {0: batch, 2: h, 3: w})):
            program = torch.export.export(net, (x,), dynamic_shapes=(dyn,) if dyn else None)
            torch.export.save(program, d / f"{name}.{suffix}.pt2")
    for dims in (1, 3):
        net = keeping(dims)
        xs = torch.randn(N, C, *(H, W, 6)[:dims])
        torch.jit.save(torch.jit.trace(net, xs), d / f"keeping{dims}d.ts")
        torch.save(net, d / f"keeping{dims}d.pt")
    return d


def dims(vi):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def export(files, tmp_path, capfd, name, *flags):
    out = tmp_path / "out.onnx"
    rc = cli.main([str(files / name), "-o", str(out), "--no-parity", *flags])
    captured = capfd.readouterr()
    return rc, (onnx.load(str(out)) if rc == 0 else None), captured.err


def groups(flag):
    """The groups a --dynamic value asks for (None: the flag is absent)."""
    if flag is None:
        return None
    text = flag.strip().lower()
    if text in ("", "none"):
        return set()
    return {p.strip() for p in flag.split(",") if p.strip()}


def check_dims(model_proto, model, want_groups, spatial, batch=N):
    k = len(spatial)
    inp, out = dims(model_proto.graph.input[0]), dims(model_proto.graph.output[0])
    assert len(model_proto.graph.input) == 1 and len(model_proto.graph.output) == 1
    dyn_batch = "batch" in want_groups
    dyn_spatial = [f"spatial{i}" in want_groups or "spatial" in want_groups for i in range(k)]
    want_in = ["batch" if dyn_batch else batch, C,
               *[NAMES[k][i] if dyn_spatial[i] else spatial[i] for i in range(k)]]
    assert inp == want_in, f"input dims {inp}, expected {want_in} for {sorted(want_groups)}"
    assert out[0] == ("batch" if dyn_batch else batch), f"output dims {out}"
    assert out[1] == OUT_CHANNELS[model], f"output dims {out}"
    want_sp = out_spatial(model, spatial)
    for i in range(k):
        if not dyn_spatial[i]:
            assert out[2 + i] == want_sp[i], f"output dims {out}: axis {2 + i} should be fixed at {want_sp[i]}"
        elif model == "keeping":
            assert out[2 + i] == NAMES[k][i], f"output dims {out}: axis {2 + i} follows the input's {NAMES[k][i]}"
        else:  # H/2: dynamic, and not the input's name
            assert not isinstance(out[2 + i], int) and out[2 + i] not in NAMES[k], f"output dims {out}"
    # the file is consistent with ONNX shape inference (strict): same fixed numbers, names kept
    inferred = onnx.shape_inference.infer_shapes(model_proto, strict_mode=True)
    assert dims(inferred.graph.output[0])[:2] == out[:2]


FLAGS = [None, "none", "NONE", "batch", "spatial", "batch,spatial", " spatial , batch "]


# ------------------------------------------------------------------ modules and TorchScript archives
@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f"dynamic={f}")
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("fmt", ["torchscript", "torchscript+shape", "pickle", "pickle-torchscript"])
def test_module_formats(files, tmp_path, capfd, fmt, model, flag):
    if fmt == "pickle" and flag in ("NONE", " spatial , batch "):
        pytest.skip("spellings covered by the fast formats (dynamo takes ~1.5 s per export)")
    name, extra = {
        "torchscript": (f"{model}.ts", []),
        "torchscript+shape": (f"{model}.noshape.ts", ["--input-shape", f"{N}x{C}x{H}x{W}"]),
        "pickle": (f"{model}.pt", ["--input-shape", f"{N}x{C}x{H}x{W}"]),
        "pickle-torchscript": (f"{model}.pt", ["--input-shape", f"{N}x{C}x{H}x{W}", "--exporter", "torchscript"]),
    }[fmt]
    flags = [*extra, "--trust-pickle"] + (["--dynamic", flag] if flag is not None else [])
    rc, proto, err = export(files, tmp_path, capfd, name, *flags)
    assert rc == 0, err
    want = groups(flag)
    check_dims(proto, model, {"batch", "spatial"} if want is None else want, [H, W])


@pytest.mark.parametrize("flag", ["none", "batch", "spatial"])
@pytest.mark.parametrize("fmt", ["ts", "pt"])
@pytest.mark.parametrize("k", [1, 3])
def test_1d_and_3d_dim_names(files, tmp_path, capfd, k, fmt, flag):
    spatial = (H, W, 6)[:k]
    shape = "x".join(map(str, (N, C, *spatial)))
    extra = ["--exporter", "torchscript"] if fmt == "pt" and flag != "spatial" else []
    rc, proto, err = export(files, tmp_path, capfd, f"keeping{k}d.{fmt}", "--input-shape", shape, "--trust-pickle",
                            "--dynamic", flag, *extra)
    assert rc == 0, err
    check_dims(proto, "keeping", groups(flag), list(spatial))


@pytest.mark.parametrize("flag,want", [("batch", "batch"), ("none", 1), (None, "batch")])
@pytest.mark.parametrize("name", ["strided.noshape.ts", "keeping.pt"])
def test_batch_of_one(files, tmp_path, capfd, name, flag, want):
    """An example batch of 1: dynamic batch stays dynamic (torch.export would pin a size-1
    dim), none keeps the 1."""
    flags = ["--input-shape", f"1x{C}x{H}x{W}", "--trust-pickle"] + (["--dynamic", flag] if flag else [])
    rc, proto, err = export(files, tmp_path, capfd, name, *flags)
    assert rc == 0, err
    assert dims(proto.graph.input[0])[0] == want and dims(proto.graph.output[0])[0] == want


@pytest.mark.parametrize("flag", ["both", "batch,channels", "height"])
def test_unknown_dynamic_group_is_a_one_line_error(files, tmp_path, capfd, flag):
    rc, _, err = export(files, tmp_path, capfd, "strided.ts", "--trust-pickle", "--dynamic", flag)
    assert rc == 2 and "--dynamic" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ torch.export programs
PROGRAM_AXES = {"static": set(), "batch": {"batch"}, "batch_h": {"batch", "spatial0"},
                "all": {"batch", "spatial0", "spatial1"}}


def _program_groups(variant, flag):
    """(groups expected in the file, or None when the CLI must refuse the flag)."""
    own = PROGRAM_AXES[variant]
    want = groups(flag)
    if want is None:  # the program's own
        return own
    asked = set()
    if "batch" in want:
        asked.add("batch")
    if "spatial" in want:
        asked |= {"spatial0", "spatial1"}
    if not asked <= own:
        return None  # an axis the program fixed: exit 2, never ignored
    return asked


@pytest.mark.parametrize("flag", [None, "none", "batch", "spatial", "batch,spatial"], ids=lambda f: f"dynamic={f}")
@pytest.mark.parametrize("variant", list(PROGRAM_AXES))
@pytest.mark.parametrize("model", list(MODELS))
def test_programs(files, tmp_path, capfd, model, variant, flag):
    want = _program_groups(variant, flag)
    if want is not None and want and model == "strided" and flag is not None and flag != "batch,spatial":
        pytest.skip("the strided program's dims are covered by the keeping one and the default flag")
    flags = ["--trust-pickle"] + (["--dynamic", flag] if flag is not None else [])
    rc, proto, err = export(files, tmp_path, capfd, f"{model}.{variant}.pt2", *flags)
    if want is None:
        assert rc == 2, err
        assert "--dynamic" in err and "fixed size" in err, err
        return
    assert rc == 0, err
    check_dims(proto, model, want, [H, W])


# ------------------------------------------------------------------ through the sandbox (subprocess)
@pytest.mark.slow
@pytest.mark.parametrize("name,flag,want", [
    ("keeping.ts", "none", set()),
    ("keeping.ts", None, {"batch", "spatial"}),
    ("keeping.batch_h.pt2", None, {"batch", "spatial0"}),
    ("strided.all.pt2", "batch", {"batch"}),
])
def test_contained_export_dims(files, tmp_path, capfd, name, flag, want):
    """The real route for an untrusted file: the contained child exports, the parent copies
    the file; the dims are the same as in-process. ~10 s each (a child imports torch)."""
    flags = ["--dynamic", flag] if flag is not None else []
    rc, proto, err = export(files, tmp_path, capfd, name, *flags)
    assert rc == 0, err
    check_dims(proto, name.split(".")[0], want, [H, W])
