"""ONNX side of poolexport: the ``poolexport`` domain, symbolic functions for both
torch exporters, standard-op decompositions (model-local functions) and export targets."""
from . import domain  # noqa: F401  (registers the OpSchemas on import)
from .domain import DOMAIN, OPS, VERSION
from .targets import TARGETS, apply_target

__all__ = ["DOMAIN", "VERSION", "OPS", "TARGETS", "apply_target", "export_model"]


def export_model(*args, **kwargs):
    """See :func:`poolexport.onnx.export.export_model` (imported lazily: it pulls in torch.onnx)."""
    from .export import export_model as _export

    return _export(*args, **kwargs)
