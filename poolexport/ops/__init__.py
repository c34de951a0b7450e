"""torch.library custom ops of the ``poolexport`` namespace.

One op per file; each defines the forward op, its backward op, a fake (meta) kernel for
torch.compile/torch.export and the autograd wiring. Argument names are the ONNX
attribute names of the ``poolexport`` ONNX domain.
"""
from .soft_pool import reduce_soft_pool, soft_pool
from .stochastic_pool import MODES as STOCHASTIC_MODES
from .stochastic_pool import reduce_stochastic_pool, stochastic_pool

__all__ = ["soft_pool", "reduce_soft_pool", "stochastic_pool", "reduce_stochastic_pool", "STOCHASTIC_MODES"]
