"""Read model files that someone else wrote without running code from them."""
from ._legacy import check_pt2, check_torchscript, weights_only_unpickling
from .errors import TRUST_HINT, UntrustedFileError
from .onnx_data import check_onnx_external_data

__all__ = ["TRUST_HINT", "UntrustedFileError", "check_onnx_external_data", "check_pt2", "check_torchscript",
           "weights_only_unpickling"]
