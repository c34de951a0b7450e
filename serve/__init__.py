"""Serving for exported models: the tritonserver bundled in nvidia-pytriton, run directly on
a generated Python-backend repository (the ONNX Runtime session lives in the backend's stub
process), behind a request gate; and Triton model repositories for full Triton. Installed
as `poolexport.serve`; see docs/serving.md.

Heavy imports (numpy, onnxruntime, pytriton, tritonclient) happen only when used.
"""


def __getattr__(name):
    if name in ("Signature", "TensorSpec", "onnx_signature"):
        from . import signature
        return getattr(signature, name)
    if name in ("Server", "serve_forever", "ensure_libpython_visible", "bundled_tritonserver"):
        from . import server
        return getattr(server, name)
    if name in ("write_repository", "write_python_model", "model_config", "parse_config"):
        from . import repository
        return getattr(repository, name)
    if name in ("OrtBackend", "TensorRTBackend", "load_backend", "custom_op_library"):
        from . import runtime
        return getattr(runtime, name)
    raise AttributeError(name)
