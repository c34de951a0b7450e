"""Serving for exported models over KServe v2 HTTP/gRPC: by default the session runs in
the serving process itself, behind its request gate and dynamic batcher (`--server
poolexport`); or the tritonserver bundled in nvidia-pytriton runs a generated
Python-backend repository behind the same gate (`--server tritonserver`); and Triton
model repositories for full Triton. Installed as `poolexport.serve`; see docs/serving.md.

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
    if name in ("DynamicBatcher", "RunError"):
        from . import batcher
        return getattr(batcher, name)
    if name in ("OrtBackend", "TensorRTBackend", "load_backend", "custom_op_library"):
        from . import runtime
        return getattr(runtime, name)
    raise AttributeError(name)
