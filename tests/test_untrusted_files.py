"""Files from someone else: nothing in them runs unless the user passes --trust-pickle.

Each crafted file (tests/_crafted.py) runs ``touch MARKER`` under the plain torch loader
(the ``test_fixture_is_a_real_attack`` cases prove it). poolexport must refuse it with
exit 2 and one line, or load it without effect; either way MARKER must not exist.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _crafted
import poolexport
from poolexport import cli
from poolexport._loading import LoadError, load_model
from poolexport._untrusted import UntrustedFileError, check_onnx_external_data

PT2_ATTACKS = {
    "sample_inputs": _crafted.pt2_sample_inputs,
    "pickled_weight": _crafted.pt2_pickled_weight,
    "pickled_weight_aliased_raw": lambda dst, marker: _crafted.pt2_pickled_weight(dst, marker, alias_as_raw=True),
    "symbolic_shape": _crafted.pt2_symbolic_shape,
    "symbolic_shape_string": lambda dst, marker: _crafted.pt2_symbolic_shape(dst, marker, via="string"),
    "guard": _crafted.pt2_guard,
    "opaque_constant": _crafted.pt2_opaque_constant,
}


def run_cli_inprocess(capfd, *args):
    # capfd, not capsys: the CLI runs the load in a contained child process, which writes
    # to the file descriptors
    code = cli.main([str(a) for a in args])
    return code, capfd.readouterr().err


def assert_refused(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _raw_torch(code: str, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(poolexport.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", "import torch, poolexport\n" + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("attack", ["sample_inputs", "symbolic_shape", "symbolic_shape_string", "guard"])
def test_fixture_is_a_real_attack(attack, tmp_path):
    """Without poolexport's checks, torch itself runs the payload (so the refusals below mean something)."""
    marker = tmp_path / "PWNED"
    path = PT2_ATTACKS[attack](tmp_path / "evil.pt2", marker)
    _raw_torch(f"ep = torch.export.load({str(path)!r})\nep.module()(torch.randn(2, 3, 32, 32))", tmp_path)
    assert marker.exists()


@pytest.mark.parametrize("attack", sorted(PT2_ATTACKS))
def test_pt2_attack_refused(attack, tmp_path, capfd):
    marker = tmp_path / "PWNED"
    path = PT2_ATTACKS[attack](tmp_path / "evil.pt2", marker)
    code, err = run_cli_inprocess(capfd, path, "-o", tmp_path / "x.onnx", "--no-parity")
    assert_refused(code, err, "--trust-pickle", str(path))
    assert not marker.exists()
    assert not (tmp_path / "x.onnx").exists()


def test_pt2_node_target_refused(tmp_path):
    path = _crafted.pt2_node_target(tmp_path / "evil.pt2")
    with pytest.raises(LoadError, match="torch.os.system.*is refused: not a torch operator"):
        load_model(path)


def test_issue_attack_through_the_command(tmp_path):
    """The reported attack, as the user ran it: `poolexport evil.pt2 -o x.onnx --no-parity`."""
    marker = tmp_path / "PWNED"
    path = _crafted.pt2_sample_inputs(tmp_path / "evil.pt2", marker)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(poolexport.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POOLEXPORT_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "poolexport.cli", str(path), "-o", "x.onnx", "--no-parity"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_refused(proc.returncode, proc.stderr, "sample_inputs", "--trust-pickle")
    assert not marker.exists()


def test_trust_pickle_loads_as_documented(tmp_path):
    """--trust-pickle hands the file to torch as is: the payload runs (that is what trust means)."""
    marker = tmp_path / "PWNED"
    path = _crafted.pt2_sample_inputs(tmp_path / "evil.pt2", marker)
    try:
        load_model(path, trust_pickle=True)
    except LoadError:
        pass  # the payload returns an int where torch wants inputs; it has run by then
    assert marker.exists()


def test_shipped_pt2_loads_without_trust():
    loaded = load_model(_crafted.PT2)
    assert loaded.kind == "exported-program"
    assert loaded.input_shape == (2, 3, 32, 32)
    assert torch.load is torch.serialization.load  # the weights-only guard is lifted after loading


def test_state_dict_attack_refused(tmp_path, capfd):
    marker = tmp_path / "PWNED"
    path = _crafted.state_dict(tmp_path / "evil.pt", marker)
    code, err = run_cli_inprocess(capfd, path, "--arch", "eca", "-o", tmp_path / "x.onnx", "--no-parity")
    assert_refused(code, err, "--trust-pickle")
    assert not marker.exists()


@pytest.mark.parametrize("make", [_crafted.torchscript_forward_writes, _crafted.torchscript_setstate_writes],
                         ids=["forward", "setstate"])
def test_torchscript_file_access_refused(make, tmp_path, capfd):
    marker = tmp_path / "PWNED"
    path = make(tmp_path / "evil.ts", marker)
    assert not marker.exists()
    code, err = run_cli_inprocess(capfd, path, "--input-shape", "1x3x8x8", "-o", tmp_path / "x.onnx",
                                  "--no-parity")
    assert_refused(code, err, "torch.save", "takes a string 'filename'", "--trust-pickle")
    assert not marker.exists()


def test_torchscript_setstate_fixture_is_real(tmp_path):
    marker = tmp_path / "PWNED"
    path = _crafted.torchscript_setstate_writes(tmp_path / "evil.ts", marker)
    load_model(path, trust_pickle=True)  # trusted: torch.jit.load runs __setstate__
    assert marker.exists()


def test_shipped_torchscript_loads_without_trust():
    loaded = load_model(_crafted.EXAMPLES / "newcbam.ts")
    assert loaded.kind == "torchscript"


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_onnx_external_data_outside_folder_refused(how, tmp_path, capfd):
    secret = tmp_path / "secret.bin"
    model = _crafted.onnx_external_data(tmp_path / "m", secret, how)
    with pytest.raises(UntrustedFileError, match="outside the model's folder"):
        check_onnx_external_data(model)
    pytest.importorskip("google.protobuf")
    from poolexport.serve import cli as serve_cli

    repo = tmp_path / "repo"
    code = serve_cli.main(["triton-repo", str(model), "-o", str(repo)])
    err = capfd.readouterr().err
    assert_refused(code, err, "outside the model's folder")
    copied = [p for p in repo.rglob("*") if p.is_file() and p.read_bytes() == secret.read_bytes()]
    assert not copied


def test_onnx_external_data_refused_by_serve_and_build_engine(tmp_path):
    model = _crafted.onnx_external_data(tmp_path / "m", tmp_path / "secret.bin", "relative")
    from poolexport.serve.runtime import OrtBackend
    from poolexport.tensorrt.engine import build_engine

    with pytest.raises(UntrustedFileError):
        OrtBackend(model)
    with pytest.raises(UntrustedFileError):
        build_engine(model, tmp_path / "x.plan")


def test_triton_repo_copies_external_data_inside_folder(tmp_path):
    """A model whose data lies beside it (large models) gets its data copied with it."""
    import numpy as np
    import onnxruntime as ort

    model = _crafted.onnx_external_data(tmp_path / "m", tmp_path / "m" / "weights.bin", "relative")
    from poolexport.serve.repository import write_repository

    model_dir = Path(write_repository(model, tmp_path / "repo", library_path=""))
    assert (model_dir / "1" / "weights.bin").read_bytes() == (tmp_path / "m" / "weights.bin").read_bytes()
    out = ort.InferenceSession(str(model_dir / "1" / "model.onnx")).run(None, {"input": np.zeros((1, 4), np.float32)})
    np.testing.assert_array_equal(out[0], [[0, 1, 2, 3]])


# -- sparse tensors: graph.sparse_initializer (values and indices), sparse attributes, subgraphs

def _external(tensor, location, length):
    import onnx

    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _sparse_tensor(values_at=None, indices_at=None):
    """Dense [4] = [0, 5, 0, 7]: values [5, 7] at indices [1, 3]; either half may be external."""
    import onnx

    values = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2])
    indices = onnx.TensorProto(name="w_indices", data_type=onnx.TensorProto.INT64, dims=[2])
    if values_at:
        _external(values, values_at, 8)
    else:
        values.float_data.extend([5, 7])
    if indices_at:
        _external(indices, indices_at, 16)
    else:
        indices.int64_data.extend([1, 3])
    return onnx.SparseTensorProto(values=values, indices=indices, dims=[4])


def _sparse_model(folder: Path, where: str, **at) -> Path:
    """An ONNX file with one sparse tensor: a sparse initializer, the sparse_value of a
    Constant node, or that Constant inside an If node's branch."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    sparse = _sparse_tensor(**at)
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])]
    if where == "initializer":
        graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["output"])], "g", inputs, outputs)
        graph.sparse_initializer.append(sparse)
    else:
        constant = helper.make_node("Constant", [], ["w"], sparse_value=sparse)
        if where == "attribute":
            nodes = [constant, helper.make_node("Add", ["input", "w"], ["output"])]
        else:  # "subgraph"
            branch = helper.make_graph([constant], "branch", [],
                                       [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])])
            cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
            nodes = [helper.make_node("Constant", [], ["c"], value=cond),
                     helper.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch),
                     helper.make_node("Add", ["input", "w"], ["output"])]
        graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _outside(tmp_path, folder, how):
    import numpy as np

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.array([5, 7], np.int64).tobytes())
    folder.mkdir(parents=True, exist_ok=True)
    if how == "relative":
        return os.path.relpath(secret, folder)
    if how == "absolute":
        return os.fspath(secret.resolve())
    (folder / "link.bin").symlink_to(secret.resolve())
    return "link.bin"


@pytest.mark.parametrize("part", ["values", "indices"])
@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_onnx_sparse_initializer_external_data_outside_folder_refused(how, part, tmp_path, capfd):
    folder = tmp_path / "m"
    model = _sparse_model(folder, "initializer", **{f"{part}_at": _outside(tmp_path, folder, how)})
    with pytest.raises(UntrustedFileError, match=rf"sparse initializer 'w' \({part}\).*outside the model's folder"):
        check_onnx_external_data(model)
    pytest.importorskip("google.protobuf")
    from poolexport.serve import cli as serve_cli

    code = serve_cli.main(["triton-repo", str(model), "-o", str(tmp_path / "repo")])
    assert_refused(code, capfd.readouterr().err, "outside the model's folder")
    assert not [p for p in (tmp_path / "repo").rglob("*.bin")]


@pytest.mark.parametrize("part", ["values", "indices"])
@pytest.mark.parametrize("where", ["attribute", "subgraph"])
def test_onnx_sparse_attribute_external_data_outside_folder_refused(where, part, tmp_path):
    folder = tmp_path / "m"
    model = _sparse_model(folder, where, **{f"{part}_at": _outside(tmp_path, folder, "relative")})
    with pytest.raises(UntrustedFileError, match="attribute 'sparse_value'.*outside the model's folder"):
        check_onnx_external_data(model)


def test_onnx_sparse_external_data_refused_by_serve(tmp_path):
    folder = tmp_path / "m"
    model = _sparse_model(folder, "initializer", values_at=_outside(tmp_path, folder, "relative"))
    from poolexport.serve.runtime import OrtBackend

    with pytest.raises(UntrustedFileError):
        OrtBackend(model)


@pytest.mark.parametrize("location", ["*/_ORT_MEM_ADDR_/*", "missing.bin", "."])
def test_onnx_external_data_memory_address_or_missing_file_refused(location, tmp_path):
    """ONNX Runtime reads `offset` as a memory address under that tag; a location must be
    an existing plain file (even a folder named like the tag with a file in it)."""
    folder = tmp_path / "m"
    (folder / "*" / "_ORT_MEM_ADDR_").mkdir(parents=True)
    (folder / "*" / "_ORT_MEM_ADDR_" / "*").write_bytes(b"\0" * 8)
    model = _sparse_model(folder, "initializer", values_at=location)
    with pytest.raises(UntrustedFileError, match="not a plain file|outside"):
        check_onnx_external_data(model)


def test_onnx_external_data_every_location_entry_checked(tmp_path):
    """Readers differ on which of two 'location' entries wins: both are checked."""
    folder = tmp_path / "m"
    inside = folder / "ok.bin"
    model = _sparse_model(folder, "initializer", values_at="ok.bin")
    inside.write_bytes(b"\0" * 8)
    import onnx

    m = onnx.load(os.fspath(model), load_external_data=False)
    entry = m.graph.sparse_initializer[0].values.external_data.add()
    entry.key, entry.value = "location", _outside(tmp_path, folder, "relative")
    model.write_bytes(m.SerializeToString())
    with pytest.raises(UntrustedFileError, match="outside the model's folder"):
        check_onnx_external_data(model)


def test_onnx_sparse_initializer_external_data_inside_folder_loads(tmp_path):
    """Sparse values and indices kept beside the graph: listed, copied by triton-repo, and
    the copied model runs in ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "values.bin").write_bytes(np.array([5, 7], np.float32).tobytes())
    (folder / "data").mkdir()
    (folder / "data" / "indices.bin").write_bytes(np.array([1, 3], np.int64).tobytes())
    model = _sparse_model(folder, "initializer", values_at="values.bin", indices_at="data/indices.bin")
    assert check_onnx_external_data(model) == ["values.bin", "data/indices.bin"]
    x = np.ones((2, 4), np.float32)
    want = x + [0, 5, 0, 7]
    np.testing.assert_array_equal(ort.InferenceSession(str(model)).run(None, {"input": x})[0], want)
    from poolexport.serve.repository import write_repository

    model_dir = Path(write_repository(model, tmp_path / "repo", library_path=""))
    assert (model_dir / "1" / "data" / "indices.bin").read_bytes() == (folder / "data" / "indices.bin").read_bytes()
    out = ort.InferenceSession(str(model_dir / "1" / "model.onnx")).run(None, {"input": x})
    np.testing.assert_array_equal(out[0], want)


def test_weights_only_unpickling_blocks_full_unpickle(tmp_path):
    """The second line of defence: inside the guard, even weights_only=False is weights-only."""
    import io

    from poolexport._untrusted import weights_only_unpickling

    marker = tmp_path / "PWNED"
    blob = _crafted.payload_pickle(marker)
    with weights_only_unpickling():
        with pytest.raises(Exception, match="[Ww]eights only"):
            torch.load(io.BytesIO(blob), weights_only=False)
    assert not marker.exists()
    assert torch.load is torch.serialization.load


def test_raw_weight_that_looks_like_a_pickle_loads(tmp_path):
    """Raw tensor payloads (use_pickle false in the archive's config) are never unpickled,
    whatever their first bytes: the check must not refuse a float tensor for them."""
    path = _crafted.pt2_weight_bytes_like_a_pickle(tmp_path / "odd.pt2")
    assert load_model(path).kind == "exported-program"
