"""Triton model repositories for the scale-out path (full Triton Inference Server, KServe),
and the one `poolexport serve` runs its bundled tritonserver on.

Layout written (variant "onnxruntime": Triton's C++ ONNX Runtime backend, no Python hop):

    <repo>/<name>/config.pbtxt
    <repo>/<name>/1/model.onnx
    <repo>/<name>/libpoolexport_ort.so      # our custom-op library, named in model_operations

variant "python" (the Python backend; the ONNX Runtime session runs in the backend's stub
process, as `poolexport serve` does; needs numpy and onnxruntime in Triton's Python):

    <repo>/<name>/config.pbtxt              # backend "python", parameters model_file, op_library
    <repo>/<name>/1/model.py                # serve/triton_model.py
    <repo>/<name>/1/model.onnx
    <repo>/<name>/libpoolexport_ort.so      # registered by model.py (op_library, relative)

variant "both": the two side by side, as <name> (onnxruntime) and <name>_python.

and for a TensorRT plan:

    <repo>/<name>/config.pbtxt              # platform "tensorrt_plan"
    <repo>/<name>/1/model.plan
    <repo>/<name>/plugins/<plugin library>  # when given; load with LD_PRELOAD or
                                            # --backend-config=tensorrt,plugins=...

The config is built as Triton's own ModelConfig protobuf message (model_config_pb2 from
tritonclient), so a field or enum Triton does not know fails here, not at load time.
"""
from __future__ import annotations

import json
import os
import shutil

from .signature import Signature, default_model_name, onnx_signature

ORT_LIBRARY_NAME = "libpoolexport_ort.so"
_PLAN_SUFFIXES = (".plan", ".engine", ".trt")
VARIANTS = ("onnxruntime", "python", "both")
PYTHON_SUFFIX = "_python"  # the python variant's folder name when both are written


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ImportError("triton-repo needs tritonclient[grpc] (Triton's model_config "
                          "schema): pip install 'poolexport[serve]'") from e
    return model_config_pb2


def model_config(name: str, signature: Signature, backend: str = "onnxruntime",
                 max_batch_size: int = 8, max_queue_delay_us: int = 100, instances: int = 1,
                 kind: str = "KIND_AUTO", op_libraries=(), parameters=None):
    """Triton ModelConfig message for `signature`; dims exclude the batch dim when batching.
    backend: "onnxruntime", "tensorrt" (platform tensorrt_plan) or "python" (serve/
    triton_model.py, configured by `parameters`)."""
    pb = _pb()
    if max_batch_size < 0:
        raise ValueError(f"triton-repo: max_batch_size must be >= 0, got {max_batch_size}")
    if instances < 1:
        raise ValueError(f"triton-repo: instances must be >= 1, got {instances}")
    if max_batch_size > 0 and not signature.batchable:
        max_batch_size = 0  # a fixed leading dim cannot be batched by Triton
    cfg = pb.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend == "onnxruntime":
        cfg.backend = "onnxruntime"
    elif backend == "tensorrt":
        cfg.platform = "tensorrt_plan"
    elif backend == "python":
        cfg.backend = "python"
    else:
        raise ValueError(f"triton-repo: backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = str(value)
    for specs, field in ((signature.inputs, cfg.input), (signature.outputs, cfg.output)):
        for t in specs:
            dims = signature.dims(t, max_batch_size)
            field.add(name=t.name, data_type=pb.DataType.Value("TYPE_" + t.triton_dtype),
                      dims=list(dims) if dims else [1])  # Triton wants >=1 dim; scalar -> [1]
    if max_batch_size > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    for lib in op_libraries:
        cfg.model_operations.op_library_filename.append(lib)
    return cfg


def to_text(cfg) -> str:
    from google.protobuf import text_format
    return text_format.MessageToString(cfg)


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's schema (raises on unknown fields/enums)."""
    from google.protobuf import text_format
    return text_format.Parse(text, _pb().ModelConfig())


def write_config(model_dir: str, cfg) -> str:
    """Write config.pbtxt after a round trip through Triton's schema; returns the text."""
    text = to_text(cfg)
    parse_config(text)  # round-trip through the schema before anything ships
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(text)
    return text


def write_python_model(model_dir: str, name: str, signature: Signature, model_file: str,
                       op_library: str = "", backend: str = "onnxruntime",
                       max_batch_size: int = 8, max_queue_delay_us: int = 100,
                       instances: int = 1, kind: str = "KIND_CPU", parameters=None,
                       private_parameters=None):
    """The Python-backend model folder: config.pbtxt and 1/model.py (serve/triton_model.py).
    model_file and op_library: absolute, or relative to model_dir. private_parameters go
    to a file only model.py reads, not into the config clients can fetch. Returns the
    config."""
    from .triton_model import PRIVATE_PARAMETERS

    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
    if private_parameters:
        fd = os.open(os.path.join(model_dir, PRIVATE_PARAMETERS), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({k: str(v) for k, v in private_parameters.items()}, f)
    shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_model.py"),
                    os.path.join(model_dir, "1", "model.py"))
    params = {"model_file": model_file, "op_library": op_library, "backend": backend,
              **(parameters or {})}
    params = {k: v for k, v in params.items() if v not in ("", None)}
    cfg = model_config(name, signature, "python", max_batch_size, max_queue_delay_us, instances,
                       kind, parameters=params)
    write_config(model_dir, cfg)
    return cfg


def write_repository(model_path, output, model_name: str | None = None,
                     backend: str | None = None, max_batch_size: int = 8,
                     max_queue_delay_us: int = 100, instances: int = 1, kind: str = "KIND_AUTO",
                     signature_from=None, plugin_library=None, library_path=None,
                     mount_path: str | None = None, variant: str = "onnxruntime") -> str:
    """Write <output>/<name>/... and return the model directory (with variant "both", the
    onnxruntime one; the python one is beside it as <name>_python).

    variant: "onnxruntime" (Triton's C++ backend; a TensorRT plan gets tensorrt_plan),
      "python" (serve/triton_model.py in the Python backend) or "both".
    library_path: the ONNX Runtime custom-op library to copy in (default: poolexport's,
      when built). mount_path: where <output> will be mounted on the server (e.g.
      "/models" in a container); op_library_filename is absolute because the onnxruntime
      backend hands it to the loader as is. Default: <output>'s absolute path here. The
      python variant names its files relative to its folder and needs no mount path.
    """
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"triton-repo: model file {model_path!r} not found")
    if variant not in VARIANTS:
        raise ValueError(f"triton-repo: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if backend is None:
        backend = "tensorrt" if model_path.endswith(_PLAN_SUFFIXES) else "onnxruntime"
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"triton-repo: backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
    if max_batch_size < 0:
        raise ValueError(f"triton-repo: max_batch_size must be >= 0, got {max_batch_size}")
    if instances < 1:
        raise ValueError(f"triton-repo: instances must be >= 1, got {instances}")
    name = model_name or default_model_name(model_path)
    out = os.path.abspath(os.fspath(output))
    root = mount_path or out
    written = []
    for v in (("onnxruntime", "python") if variant == "both" else (variant,)):
        folder = name + PYTHON_SUFFIX if variant == "both" and v == "python" else name
        model_dir = os.path.join(out, folder)
        os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
        sig, model_file, has_library = _copy_model(model_path, model_dir, backend, signature_from,
                                                   plugin_library, library_path)
        batching = dict(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                        instances=instances)
        if v == "python":
            write_python_model(model_dir, folder, sig, model_file=model_file,
                               op_library=ORT_LIBRARY_NAME if has_library else "", backend=backend,
                               kind="KIND_CPU" if kind == "KIND_AUTO" else kind, **batching)
        else:
            libs = [f"{root.rstrip('/')}/{folder}/{ORT_LIBRARY_NAME}"] if has_library else []
            write_config(model_dir, model_config(folder, sig, backend, kind=kind,
                                                 op_libraries=libs, **batching))
        written.append(model_dir)
    return written[0]


def _copy_model(model_path, model_dir, backend, signature_from, plugin_library, library_path):
    """Copy the model (and its library or plugin) into model_dir; returns (signature,
    model file relative to model_dir, whether the ORT library was copied)."""
    if backend == "onnxruntime":
        from poolexport._untrusted import check_onnx_external_data

        data_files = check_onnx_external_data(model_path)  # nothing from outside its folder
        sig = onnx_signature(model_path)
        shutil.copyfile(model_path, os.path.join(model_dir, "1", "model.onnx"))
        for location in data_files:  # large models keep their weights beside the graph
            dst = os.path.join(model_dir, "1", location)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(os.path.dirname(model_path), location), dst)
        if library_path is None:
            from .runtime import custom_op_library
            library_path = custom_op_library()
        if library_path:
            shutil.copyfile(os.fspath(library_path), os.path.join(model_dir, ORT_LIBRARY_NAME))
        return sig, "1/model.onnx", bool(library_path)
    sig = _plan_signature(model_path, signature_from)
    shutil.copyfile(model_path, os.path.join(model_dir, "1", "model.plan"))
    if plugin_library:
        os.makedirs(os.path.join(model_dir, "plugins"), exist_ok=True)
        shutil.copyfile(plugin_library, os.path.join(
            model_dir, "plugins", os.path.basename(plugin_library)))
    return sig, "1/model.plan", False


def _plan_signature(plan_path: str, signature_from) -> Signature:
    """A plan's I/O: from the ONNX it was built from, else from TensorRT itself."""
    if signature_from:
        return onnx_signature(signature_from)
    try:
        from .runtime import TensorRTBackend
        return TensorRTBackend(plan_path).signature
    except Exception as e:
        raise ValueError(
            "triton-repo: cannot read the plan's inputs/outputs without TensorRT; pass "
            f"--signature-from model.onnx (the file it was built from) ({e})") from None
