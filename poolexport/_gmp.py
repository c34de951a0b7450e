"""Generalized max pooling (GMP): Murray and Perronnin, "Generalized Max Pooling", CVPR 2014.

A set of N descriptors of dimension D, the columns of Phi (D x N), pools to the vector phi
whose dot product with every descriptor is as close to 1 as a ridge penalty allows::

    phi = argmin ||Phi^T phi - 1_N||^2 + lam ||phi||^2
        = Phi (Phi^T Phi + lam I_N)^-1 1_N         dual: an N x N system
        = (Phi Phi^T + lam I_D)^-1 Phi 1_N         primal: a D x D system (the same vector)

A frequent descriptor then counts as much as a rare one (max pooling's property, for
vectors); lam -> inf gives sum pooling / lam. timm has no GMP (checked at
huggingface/pytorch-image-models aa4b5850, timm/layers/other_pool.py: LSE and SimPool only),
so the definition is the paper's; "Deep Generalized Max Pooling" (Christlein et al., ICDAR
2019; VChristlein/dgmp, dgmp.py) solves the same dual system with lam = 1e3 and L2-normalizes
the result afterwards, which is left to the caller here.

Scaling. With s = max |Phi| (per sample, no gradient: phi does not depend on it) and
B = Phi / s, |B| <= 1 and the system is divided by lam + ||Phi||_F^2::

    phi = pref * B (w B^T B + g I)^-1 1
    w = s^2 / (lam + ||Phi||_F^2),  g = lam / (lam + ||Phi||_F^2),  pref = s / (lam + ||Phi||_F^2)

computed from s and ||B||_F^2 without forming s^2 or ||Phi||^2 (1e4 squared overflows
fp16; a denormal's square underflows). The spectrum of w B^T B + g I lies in [g, 1], so its
condition number is at most kappa = 1 / g = 1 + ||Phi||_F^2 / lam. fp16/bf16 inputs are
computed in float32 and rounded once.

Solving. ONNX has no linear solve. Eagerly (``solver="solve"``) the system is solved with
torch.linalg.solve in the smaller of the two forms. When exporting (``solver="series"``,
what ``"auto"`` picks under torch.export / torch.onnx), it is inverted by SQUARINGS
repeated squarings: with E = I - A / h (h = g + w ||B||_F^2 >= the largest eigenvalue of A),
A^-1 = (1/h) sum_j E^j = (1/h) prod_i (I + E^(2^i)), and 2^SQUARINGS terms leave a relative
error of at most (1 - 1/kappa)^(2^SQUARINGS) <= exp(-2^SQUARINGS / kappa). This is Newton-
Schulz from X0 = I / h, in MatMul, Add and Mul (the identity from Range and Equal). For kappa <= KAPPA_MAX the truncation
is below SERIES_TOL (fp32's half ulp), and the float32 result is within 1e-5 + 2 kappa 2^-24
(normwise relative; rounding, amplified by the conditioning: 2.6e-4 at the bound). Beyond KAPPA_MAX the
series solves with g raised to 1 / KAPPA_MAX, i.e. exactly GMP with
lam_eff = (lam + ||Phi||_F^2) / KAPPA_MAX: finite, but not the definition; the eager path
warns when an input is there.

Non-finite values: a NaN or +-inf anywhere in a sample's descriptors gives NaN for the whole
of that sample's phi (every component depends on every descriptor; IEEE propagation through
the Gram matrix does it, no runtime-specific NaN rule is involved).
"""
from __future__ import annotations

import math
import warnings

import torch

from ._args import check_real, normalize_dims

# KAPPA_MAX = 2^12 = 1 / sqrt(fp32's unit roundoff): the series' rounding error grows like
# kappa * 2^-24, the bias of raising lam at the bound like 1 / KAPPA_MAX; both are 2^-12 there.
# It also keeps E's top eigenvalue 2^-12 below 1, far from where rounding could push it over.
# SQUARINGS: the least with 2^SQUARINGS >= KAPPA_MAX * ln(1 / SERIES_TOL) (= 68140):
# (1 - 2^-12)^(2^17) = exp(-32) < 2^-24, while 16 squarings leave exp(-16) > 2^-24
KAPPA_MAX = 2.0 ** 12
SERIES_TOL = 2.0 ** -24
SQUARINGS = 17
SOLVERS = ("auto", "solve", "series")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _cast(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # no op when the dtype is already right (a no-op .to() becomes a dtype assertion in
    # torch.export, which a program converted with .half() then fails)
    return v if v.dtype == dtype else v.to(dtype)


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def check_lam(owner: str, lam) -> float:
    lam = check_real(owner, "lam", lam)
    if not lam > 0:
        raise ValueError(f"{owner}: lam must be > 0 (the ridge that makes the system solvable), got {lam}")
    return lam


def check_solver(owner: str, solver) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"{owner}: solver must be one of {SOLVERS}, got {solver!r}")
    return solver


def _eye_like(gram: torch.Tensor) -> torch.Tensor:
    # (m, m) identity from the (symbolic) size: Range + Equal in ONNX, no EyeLike needed
    idx = torch.arange(gram.shape[-1], device=gram.device)
    return (idx.unsqueeze(-1) == idx.unsqueeze(0)).to(gram.dtype)


def _series_solve(gram: torch.Tensor, rhs: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                  h: torch.Tensor, squarings: int) -> torch.Tensor:
    """(w gram + g I)^-1 rhs as (1/h) prod_{i < squarings} (I + E^(2^i)) rhs, E = I - (w gram + g I) / h."""
    e = (1 - g / h) * _eye_like(gram) - (w / h) * gram
    y = rhs
    for i in range(squarings):
        y = y + torch.matmul(e, y)
        if i + 1 < squarings:
            e = torch.matmul(e, e)
    return y / h


def _gmp_flat(phi: torch.Tensor, lam: float, solver: str, squarings: int) -> torch.Tensor:
    """phi: (n, D, N) in the compute dtype -> (n, D)."""
    # a NaN or +-inf makes s NaN or inf (or, in a runtime whose ReduceMax skips NaN, stays in B):
    # either way NaN reaches every entry of the Gram matrix, hence all of the sample's phi
    s = phi.abs().amax((1, 2), keepdim=True).detach()
    # an all-zero sample, or one below the smallest normal: scale 1 (phi = 0, or ~ Phi 1 / lam
    # at the bottom of the range). Dividing by a denormal s gives 0 / 0 in runtimes that flush
    # denormals to zero (OpenVINO's CPU plugin)
    s = torch.where(s >= torch.finfo(s.dtype).tiny, s, torch.ones_like(s))
    b = phi / s
    nb = (b * b).sum((1, 2), keepdim=True).detach()  # ||B||_F^2, in [1, D N] (0 for all zero)
    q = math.sqrt(lam) / s
    q2 = q * q  # lam / s^2: inf for tiny s, 0 for huge s, both handled below
    w = 1 / (q2 + nb)
    g = 1 / (1 + nb / q2)
    # s / (lam + ||Phi||_F^2), in the form that neither overflows nor flushes to 0: lam / s
    # overflows for a denormal s (s / lam is right there), s * nb for a huge one
    pref = torch.where(q2 >= 1, (s / lam) / (1 + nb / q2), 1 / (lam / s + s * nb))
    d, n = phi.shape[1], phi.shape[2]
    # the smaller system when both sizes are known; a symbolic (dynamic) N keeps the dual
    primal = isinstance(n, int) and isinstance(d, int) and d < n
    if solver == "auto":
        solver = "series" if _exporting() else "solve"
    if primal:
        gram, rhs = torch.matmul(b, b.transpose(1, 2)), b.sum(2, keepdim=True)
    else:
        gram, rhs = torch.matmul(b.transpose(1, 2), b), torch.ones_like(b[:, :1, :]).transpose(1, 2)
    if solver == "series":
        g = torch.clamp(g, min=1 / KAPPA_MAX)
        z = _series_solve(gram, rhs, w, g, g + w * nb, squarings)
    else:
        if not _exporting() and not torch.compiler.is_compiling():
            if bool((g < 1 / KAPPA_MAX).any()):
                warnings.warn(f"generalized max pooling: 1 + ||Phi||_F^2 / lam exceeds {KAPPA_MAX:g} for this input; "
                              "an exported graph solves it with a larger lam there (raise lam or scale the "
                              "features down)", stacklevel=3)
        g = torch.clamp(g, min=torch.finfo(g.dtype).eps)  # SPD in floating point
        z = torch.linalg.solve(w * gram + g * _eye_like(gram), rhs)
    out = z if primal else torch.matmul(b, z)
    return (pref * out).squeeze(-1)


def generalized_max_pool_reduce(x: torch.Tensor, lam: float = 1e3, dim=None, keepdim: bool = False,
                                solver: str = "auto", *, squarings: int = SQUARINGS) -> torch.Tensor:
    """GMP over the axes ``dim`` (the positions; None: every axis but 0): for each index of
    axis 0 (the batch), the descriptors are the vectors along the remaining axes, and the
    output has the pooled axes removed (``keepdim``: kept with size 1).

    ``lam``: the ridge (> 0, finite). ``solver``: ``"solve"`` (torch.linalg.solve),
    ``"series"`` (the exported form), ``"auto"`` (series under export, else solve).
    ``squarings`` (series only) is exposed for tests of its bound; keep the default."""
    name = "generalized_max_pool_reduce"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name}: input must be a floating-point torch.Tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"{name}: input must have a batch axis and at least one more, got shape {tuple(x.shape)}")
    lam = check_lam(name, lam)
    solver = check_solver(name, solver)
    if isinstance(squarings, bool) or not isinstance(squarings, int) or squarings < 1:
        raise ValueError(f"{name}: squarings must be an int >= 1, got {squarings!r}")
    pooled = sorted(normalize_dims(name, x.dim(), list(range(1, x.dim())) if dim is None else dim))
    if 0 in pooled:
        raise ValueError(f"{name}: axis 0 is the batch axis and cannot be pooled, got dim={dim}")
    kept = [a for a in range(1, x.dim()) if a not in pooled]
    xc = _cast(x, _compute_dtype(x))
    perm = [0] + kept + pooled
    kept_shape = [x.shape[a] for a in kept]
    flat = xc.permute(perm).reshape(x.shape[0], math.prod(kept_shape), -1)
    y = _gmp_flat(flat, lam, solver, squarings).reshape([x.shape[0]] + kept_shape)
    if keepdim:
        for a in pooled:
            y = y.unsqueeze(a)
    return _cast(y, x.dtype)


def generalized_max_pool(x: torch.Tensor, lam: float = 1e3, flatten: bool = False, solver: str = "auto"
                         ) -> torch.Tensor:
    """Global GMP of N x C x D1..: the C-dimensional descriptors of the D1*D2*.. positions
    pool to N x C x 1.. (``flatten``: N x C)."""
    if isinstance(x, torch.Tensor) and x.dim() < 3:
        raise ValueError(f"generalized_max_pool: input must be N x C x D1.. (rank >= 3), got shape "
                         f"{tuple(x.shape)}")
    return generalized_max_pool_reduce(x, lam, list(range(2, x.dim())), not flatten, solver)


__all__ = ["generalized_max_pool", "generalized_max_pool_reduce"]
