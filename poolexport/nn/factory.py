"""String factories: ``create_pool`` for every pool of the family in each of its forms,
``create_attention`` for SE / ECA / CBAM (timm's ``get_attn`` habit).

Forms of a pool:

* ``"global"``: N x C x D1.. -> N x C x 1.. (``flatten=True``: N x C); channel descriptors.
* ``"channel"``: N x C x D1.. -> N x 1 x D1..; the reduction across the channel axis that
  CBAM's spatial branch uses.
* ``"reduce"``: over explicit axes ``dim`` with ``keepdim``.
* ``"window"``: a kernel sliding over ``dims`` (1, 2 or 3) spatial axes; needs
  ``kernel_size`` (and takes ``stride``, ``padding``, ``dilation``, ``ceil_mode``).

``avgmax`` is 0.5 * (avg + max); ``catavgmax`` concatenates avg and max on the channel
axis, so its global form gives N x 2C and its channel form N x 2 (timm's names).

Pool-specific options (``p``, ``mean``, ``beta``, ``seed``, ``alpha``, ``learn_alpha``,
``count_include_pad``, ``r``, ``eps``, ``learn_p``, ``learn_r``, ``lam``) go to the pools that
have them and are ignored by the others, so one set of options can serve a tuple of pool names.
``gmp`` (generalized max pooling) pools vectors, not windows: it has no window form.
An ``nn.Module`` is returned unchanged: the caller vouches for its output shape.
"""
from __future__ import annotations

from typing import Optional, Union

from torch import nn

from .avg_max_pool import (AvgMaxPool1d, AvgMaxPool2d, AvgMaxPool3d, AvgPool1d, AvgPool2d, AvgPool3d, CatAvgMaxPool1d,
                           CatAvgMaxPool2d, CatAvgMaxPool3d, MaxPool1d, MaxPool2d, MaxPool3d)
from .ada_pool import (AdaPool1d, AdaPool2d, AdaPool3d, EdscwPool1d, EdscwPool2d, EdscwPool3d, IdwPool1d, IdwPool2d,
                       IdwPool3d)
from .gem_pool import GeMPool1d, GeMPool2d, GeMPool3d, GeMPoolReduce, GlobalGeMPool
from .gmp_pool import GeneralizedMaxPoolReduce, GlobalGeneralizedMaxPool
from .global_pool import (GlobalAvgMaxPool, GlobalAvgPool, GlobalCatAvgMaxPool, GlobalLpPool, GlobalMaxPool,
                          GlobalMixedPool, GlobalSoftPool, GlobalStochasticPool)
from .lp_pool import LpPool1d, LpPool2d, LpPool3d, LpPoolReduce
from .lse_pool import GlobalLsePool, LsePool1d, LsePool2d, LsePool3d, LsePoolReduce
from .mixed_pool import MixedPool1d, MixedPool2d, MixedPool3d, MixedPoolReduce
from .reduce_pool import AvgMaxPoolReduce, AvgPoolReduce, CatAvgMaxPoolReduce, MaxPoolReduce
from .soft_pool import SoftPool1d, SoftPool2d, SoftPool3d, SoftPoolReduce
from .stochastic_pool import StochasticPool1d, StochasticPool2d, StochasticPool3d, StochasticPoolReduce

POOL_NAMES = ("avg", "max", "l2", "lp", "rms", "soft", "stochastic", "mixed", "avgmax", "catavgmax", "gem", "lse",
              "gmp")
# pools whose output has twice the input's channels (global: N x 2C; across channels: N x 2)
CONCAT_POOLS = ("catavgmax",)
# pools with no window form (replace_pools leaves a network's window pools alone for them)
GLOBAL_ONLY_POOLS = ("gmp",)
# pools with only a window form (the adaPool family; create_pool and replace_pools take
# them, replace_pools leaves global pools alone for them); not in POOL_NAMES, whose every
# name also has the global/channel forms that the attention blocks use
WINDOW_ONLY_POOLS = ("edscw", "idw", "ada")
POOL_FORMS = ("global", "channel", "reduce", "window")
ATTENTION_NAMES = ("se", "eca", "cbam")

_WINDOW = {
    "avg": (AvgPool1d, AvgPool2d, AvgPool3d),
    "max": (MaxPool1d, MaxPool2d, MaxPool3d),
    "lp": (LpPool1d, LpPool2d, LpPool3d),
    "soft": (SoftPool1d, SoftPool2d, SoftPool3d),
    "stochastic": (StochasticPool1d, StochasticPool2d, StochasticPool3d),
    "mixed": (MixedPool1d, MixedPool2d, MixedPool3d),
    "avgmax": (AvgMaxPool1d, AvgMaxPool2d, AvgMaxPool3d),
    "catavgmax": (CatAvgMaxPool1d, CatAvgMaxPool2d, CatAvgMaxPool3d),
    "edscw": (EdscwPool1d, EdscwPool2d, EdscwPool3d),
    "idw": (IdwPool1d, IdwPool2d, IdwPool3d),
    "ada": (AdaPool1d, AdaPool2d, AdaPool3d),
}
_REDUCE = {"avg": AvgPoolReduce, "max": MaxPoolReduce, "avgmax": AvgMaxPoolReduce, "catavgmax": CatAvgMaxPoolReduce}
_GLOBAL = {"avg": GlobalAvgPool, "max": GlobalMaxPool, "avgmax": GlobalAvgMaxPool, "catavgmax": GlobalCatAvgMaxPool}


def _lp_args(name: str, p: Optional[float], mean: bool) -> tuple[float, bool]:
    if name == "l2":
        return 2.0, False
    if name == "rms":
        return 2.0, True
    return 2.0 if p is None else float(p), bool(mean)


def _generalized(name: str, form: str, dims: int, window: dict, dim, keepdim: bool, flatten: bool, p, r: float,
                 eps: float, learn_p: bool, learn_r: bool) -> nn.Module:
    """GeM (p defaults to 3, cirtorch's) and LSE pools in every form."""
    p = 3.0 if p is None else p
    if form == "global":
        return GlobalGeMPool(p, eps, learn_p, flatten=flatten) if name == "gem" else GlobalLsePool(r, learn_r,
                                                                                                 flatten=flatten)
    if form in ("channel", "reduce"):
        dim, keepdim = (1, True) if form == "channel" else (dim, keepdim)
        return GeMPoolReduce(dim, keepdim, p, eps, learn_p) if name == "gem" else LsePoolReduce(dim, keepdim, r,
                                                                                                learn_r)
    if name == "gem":
        return (GeMPool1d, GeMPool2d, GeMPool3d)[dims - 1](**window, p=p, eps=eps, learn_p=learn_p)
    return (LsePool1d, LsePool2d, LsePool3d)[dims - 1](**window, r=r, learn_r=learn_r)


def _gmp(form: str, dim, keepdim: bool, flatten: bool, lam: float) -> nn.Module:
    """Generalized max pooling: global (the C-vectors of the positions), channel (the maps of
    the channels) or reduce (positions along ``dim``); no window form."""
    if form == "global":
        return GlobalGeneralizedMaxPool(lam, flatten)
    if form in ("channel", "reduce"):
        dim, keepdim = (1, True) if form == "channel" else (dim, keepdim)
        return GeneralizedMaxPoolReduce(dim, keepdim, lam)
    if form == "window":
        raise ValueError("create_pool: 'gmp' pools whole sets of vectors and has no window form; "
                         "use form='global', 'channel' or 'reduce'")
    raise ValueError(f"create_pool: form must be one of {POOL_FORMS}, got {form!r}")


def _reduce(name: str, dim, keepdim: bool, p, mean, beta, seed, alpha, learn_alpha) -> nn.Module:
    if name in _REDUCE:
        return _REDUCE[name](dim, keepdim)
    if name in ("l2", "lp", "rms"):
        pp, mm = _lp_args(name, p, mean)
        return LpPoolReduce(pp, dim, keepdim, mm)
    if name == "soft":
        return SoftPoolReduce(dim, keepdim, beta)
    if name == "stochastic":
        return StochasticPoolReduce(dim, keepdim, seed)
    return MixedPoolReduce(dim, keepdim, alpha, learn_alpha)


def _global(name: str, flatten: bool, p, mean, beta, seed, alpha, learn_alpha) -> nn.Module:
    if name in _GLOBAL:
        return _GLOBAL[name](flatten)
    if name in ("l2", "lp", "rms"):
        pp, mm = _lp_args(name, p, mean)
        return GlobalLpPool(pp, mm, flatten)
    if name == "soft":
        return GlobalSoftPool(beta, flatten)
    if name == "stochastic":
        return GlobalStochasticPool(seed, flatten)
    return GlobalMixedPool(alpha, learn_alpha, flatten)


def create_pool(
    pool: Union[str, nn.Module],
    form: str = "global",
    *,
    dims: int = 2,
    kernel_size=None,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    count_include_pad: bool = False,
    dim=None,
    keepdim: bool = True,
    flatten: bool = False,
    p: Optional[float] = None,
    mean: bool = False,
    beta: float = 1.0,
    seed: Optional[int] = None,
    alpha: float = 0.5,
    learn_alpha: bool = False,
    r: float = 10.0,
    eps: float = 1e-6,
    learn_p: bool = True,
    learn_r: bool = True,
    lam: float = 1e3,
    argname: str = "pool",
) -> nn.Module:
    """Build pool ``pool`` (a name of POOL_NAMES or an nn.Module) in form ``form``.

    ``p`` is the Lp pools' norm (default 2) and GeM's exponent (default 3, learned unless
    ``learn_p=False``); ``r`` is LSE's (default 10, timm's, learned unless ``learn_r=False``);
    ``lam`` is GMP's ridge (default 1e3, fixed).

    ``argname`` names the caller's argument in error messages (e.g. ``"CBAM: spatial_pools[1]"``).
    """
    if isinstance(pool, nn.Module):
        return pool
    if not isinstance(pool, str) or pool.lower() not in POOL_NAMES + WINDOW_ONLY_POOLS:
        raise ValueError(f"{argname} must be one of {POOL_NAMES + WINDOW_ONLY_POOLS} or an nn.Module, got {pool!r}")
    name = pool.lower()
    window = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    generalized = (name, form, dims, window, dim, keepdim, flatten, p, r, eps, learn_p, learn_r)
    if name in ("gem", "lse") and form in ("global", "channel", "reduce"):
        return _generalized(*generalized)
    if name == "gmp":
        return _gmp(form, dim, keepdim, flatten, lam)
    if name in WINDOW_ONLY_POOLS and form != "window":
        raise ValueError(f"create_pool: {name!r} (adaPool family) has only a window form, got form={form!r}")
    opts = dict(p=p, mean=mean, beta=beta, seed=seed, alpha=alpha, learn_alpha=learn_alpha)
    if form == "global":
        return _global(name, flatten, **opts)
    if form == "channel":
        return _reduce(name, 1, True, **opts)
    if form == "reduce":
        return _reduce(name, dim, keepdim, **opts)
    if form != "window":
        raise ValueError(f"create_pool: form must be one of {POOL_FORMS}, got {form!r}")
    if dims not in (1, 2, 3):
        raise ValueError(f"create_pool: dims must be 1, 2 or 3 for form='window', got {dims!r}")
    if kernel_size is None:
        raise ValueError("create_pool: kernel_size is required for form='window'")
    if name in ("gem", "lse"):
        return _generalized(*generalized)
    cls = _WINDOW["lp" if name in ("l2", "rms") else name][dims - 1]
    window = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    if name in ("l2", "lp", "rms"):
        pp, mm = _lp_args(name, p, mean)
        return cls(pp, kernel_size, stride, ceil_mode, padding=padding, dilation=dilation, mean=mm)
    if name == "soft":
        return cls(kernel_size, **window, beta=beta)
    if name == "stochastic":
        return cls(kernel_size, **window, seed=seed)
    if name == "mixed":
        return cls(kernel_size, **window, alpha=alpha, learn_alpha=learn_alpha)
    if name == "avg":
        return cls(kernel_size, **window, count_include_pad=count_include_pad)
    return cls(kernel_size, **window)


def create_attention(attn: Union[str, nn.Module, None], channels: int, **kwargs) -> nn.Module:
    """Build attention block ``attn`` ("se", "eca", "cbam") for ``channels`` channels;
    ``None`` or ``"none"`` gives nn.Identity, an nn.Module is returned unchanged."""
    from .attention import CBAM, ECA, SE

    if isinstance(attn, nn.Module):
        return attn
    if attn is None or (isinstance(attn, str) and attn.lower() == "none"):
        return nn.Identity()
    blocks = {"se": SE, "eca": ECA, "cbam": CBAM}
    if not isinstance(attn, str) or attn.lower() not in blocks:
        raise ValueError(f"create_attention: attn must be one of {ATTENTION_NAMES}, 'none' or an nn.Module, "
                         f"got {attn!r}")
    return blocks[attn.lower()](channels, **kwargs)
