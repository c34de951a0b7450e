"""poolexport: pooling and attention layers from PyTorch to ONNX Runtime and TensorRT."""
__version__ = "0.1.0"

from . import functional, nn, ops  # noqa: E402,F401
from .ort import get_library_path  # noqa: E402,F401
