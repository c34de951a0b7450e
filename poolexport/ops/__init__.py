"""torch.library custom ops of the ``poolexport`` namespace.

One op per file (``soft_pool.py``, ``stochastic_pool.py``): its math as the pure-torch
reference, its Python kernels and fake kernels; ``_registry.py`` registers every op the
same way (schemas, the compiled CPU kernels of the custom-op library, CUDA, autograd).
Argument names are the ONNX attribute names of the ``poolexport`` ONNX domain.
"""
from .soft_pool import reduce_soft_pool, soft_pool
from . import ada_pool as _ada_pool  # noqa: F401  (registers edscw_pool, idw_pool, ada_pool)
from . import ada_unpool as _ada_unpool  # noqa: F401  (registers ada_unpool)
from .stochastic_pool import MODES as STOCHASTIC_MODES
from .stochastic_pool import reduce_stochastic_pool, stochastic_pool


def _install_torch_onnx_hook() -> None:
    """Register the ops' ONNX translations with torch.onnx's exporter when it loads (or
    now, if it is loaded), so plain ``torch.onnx.export(..., dynamo=True)`` knows them
    without ``custom_translation_table``; lazy so that ``import poolexport`` does not pull
    in torch.onnx and onnxscript."""

    def register(module) -> None:
        try:
            from ..onnx.translations import register_with_torch_onnx

            register_with_torch_onnx()
        except Exception as exc:  # never break torch.onnx's own import
            import warnings

            warnings.warn(f"poolexport: could not register its ONNX translations with torch.onnx ({exc}); pass "
                          "custom_translation_table=poolexport.onnx.translations.custom_translation_table()",
                          RuntimeWarning, stacklevel=2)

    from .._import_hooks import after_import

    # the registry list lives in _torchlib._torchlib_registry, which _registration imports
    # before it defines OnnxDecompMeta: register once _registration has finished loading
    after_import("torch.onnx._internal.exporter._registration", register)


_install_torch_onnx_hook()

__all__ = ["soft_pool", "reduce_soft_pool", "stochastic_pool", "reduce_stochastic_pool", "STOCHASTIC_MODES"]
