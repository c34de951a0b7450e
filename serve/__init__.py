"""Serving for exported models: an embedded Triton-protocol server (PyTriton) and Triton
model repositories. Installed as `poolexport.serve`; see README section "Serve".

Heavy imports (onnxruntime, pytriton, tritonclient) happen only when used.
"""
from .signature import Signature, TensorSpec, onnx_signature  # noqa: F401


def __getattr__(name):
    if name in ("Server", "serve_forever", "ensure_libpython_visible"):
        from . import server
        return getattr(server, name)
    if name in ("write_repository", "model_config", "parse_config"):
        from . import repository
        return getattr(repository, name)
    if name in ("OrtBackend", "TensorRTBackend", "load_backend", "custom_op_library"):
        from . import runtime
        return getattr(runtime, name)
    raise AttributeError(name)
