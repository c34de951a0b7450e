"""Triton model repositories for the scale-out path (full Triton Inference Server, KServe).

Layout written (onnxruntime):

    <repo>/<name>/config.pbtxt
    <repo>/<name>/1/model.onnx
    <repo>/<name>/libpoolexport_ort.so      # our custom-op library, named in model_operations

and for a TensorRT plan:

    <repo>/<name>/config.pbtxt              # platform "tensorrt_plan"
    <repo>/<name>/1/model.plan
    <repo>/<name>/plugins/<plugin library>  # when given; load with LD_PRELOAD or
                                            # --backend-config=tensorrt,plugins=...

The config is built as Triton's own ModelConfig protobuf message (model_config_pb2 from
tritonclient), so a field or enum Triton does not know fails here, not at load time.
"""
from __future__ import annotations

import os
import shutil

from .signature import Signature, default_model_name, onnx_signature

ORT_LIBRARY_NAME = "libpoolexport_ort.so"
_PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ImportError("triton-repo needs tritonclient[grpc] (Triton's model_config "
                          "schema): pip install 'poolexport[serve]'") from e
    return model_config_pb2


def model_config(name: str, signature: Signature, backend: str = "onnxruntime",
                 max_batch_size: int = 8, max_queue_delay_us: int = 100, instances: int = 1,
                 kind: str = "KIND_AUTO", op_libraries=()):
    """Triton ModelConfig message for `signature`; dims exclude the batch dim when batching."""
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
    else:
        raise ValueError(f"triton-repo: backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
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


def write_repository(model_path, output, model_name: str | None = None,
                     backend: str | None = None, max_batch_size: int = 8,
                     max_queue_delay_us: int = 100, instances: int = 1, kind: str = "KIND_AUTO",
                     signature_from=None, plugin_library=None, library_path=None,
                     mount_path: str | None = None) -> str:
    """Write <output>/<name>/... and return the model directory.

    library_path: the ONNX Runtime custom-op library to copy in (default: poolexport's,
      when built). mount_path: where <output> will be mounted on the server (e.g.
      "/models" in a container); op_library_filename is absolute because the onnxruntime
      backend hands it to the loader as is. Default: <output>'s absolute path here.
    """
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"triton-repo: model file {model_path!r} not found")
    if backend is None:
        backend = "tensorrt" if model_path.endswith(_PLAN_SUFFIXES) else "onnxruntime"
    name = model_name or default_model_name(model_path)
    out = os.path.abspath(os.fspath(output))
    root = mount_path or out
    model_dir = os.path.join(out, name)
    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)

    op_libraries = []
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
            op_libraries.append(f"{root.rstrip('/')}/{name}/{ORT_LIBRARY_NAME}")
    elif backend == "tensorrt":
        sig = _plan_signature(model_path, signature_from)
        shutil.copyfile(model_path, os.path.join(model_dir, "1", "model.plan"))
        if plugin_library:
            os.makedirs(os.path.join(model_dir, "plugins"), exist_ok=True)
            shutil.copyfile(plugin_library, os.path.join(
                model_dir, "plugins", os.path.basename(plugin_library)))
    else:
        raise ValueError(f"triton-repo: backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")

    cfg = model_config(name, sig, backend, max_batch_size, max_queue_delay_us, instances,
                       kind, op_libraries)
    text = to_text(cfg)
    parse_config(text)  # round-trip through the schema before anything ships
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(text)
    return model_dir


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
