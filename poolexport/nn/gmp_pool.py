"""Generalized max pooling (GMP): the vector whose dot product with every position's
descriptor is 1, up to a ridge ``lam`` (Murray and Perronnin, CVPR 2014).

    phi = Phi (Phi^T Phi + lam I)^-1 1        Phi: D x N, the D-dim descriptors of N positions

Unlike the other pools, GMP couples the channels: the global form pools the C-vectors of
the spatial positions to one C-vector (a frequent pattern weighs as much as a rare one),
the channel form pools the H*W maps of the C channels to one map. ``lam`` (default 1e3, as
in VChristlein/dgmp) is fixed. The export is standard ONNX (MatMul, Mul, Add, ReduceSum,
ReduceMax): a fixed number of repeated squarings replaces the linear solve, accurate while
1 + ||Phi||_F^2 / lam <= 2^12 (see ``poolexport._gmp``).
"""
from __future__ import annotations

import torch
from torch import nn

from .._args import check_bool, check_dim
from .._gmp import check_lam, check_solver, generalized_max_pool, generalized_max_pool_reduce


class GlobalGeneralizedMaxPool(nn.Module):
    """GMP over every spatial axis of N x C x D1..: N x C x 1.. (``flatten=True``: N x C)."""

    def __init__(self, lam: float = 1e3, flatten: bool = False, solver: str = "auto"):
        super().__init__()
        owner = type(self).__name__
        self.lam = check_lam(owner, lam)
        self.flatten = check_bool(owner, "flatten", flatten)
        self.solver = check_solver(owner, solver)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return generalized_max_pool(x, self.lam, self.flatten, self.solver)

    def extra_repr(self) -> str:
        solver = f", solver={self.solver!r}" if self.solver != "auto" else ""
        return f"lam={self.lam}, flatten={self.flatten}{solver}"


class GeneralizedMaxPoolReduce(nn.Module):
    """GMP over the positions along axes ``dim``, the descriptors along the other non-batch
    axes (``dim=1, keepdim=True``: across channels, N x 1 x D1..)."""

    def __init__(self, dim=None, keepdim: bool = False, lam: float = 1e3, solver: str = "auto"):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        self.lam = check_lam(owner, lam)
        self.solver = check_solver(owner, solver)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return generalized_max_pool_reduce(x, self.lam, self.dim, self.keepdim, self.solver)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, lam={self.lam}" + (
            f", solver={self.solver!r}" if self.solver != "auto" else "")
