"""Swap the pools of an existing network (torchvision, timm, your own) for poolexport's.

This is how the SoftPool paper's users work: take a pretrained network and replace its
max/average pools, keeping every other layer and weight. Each pool keeps its geometry
(kernel, stride, padding, dilation, ceil_mode), so the network's shapes do not change::

    model = torchvision.models.resnet18(weights="DEFAULT")
    replaced = pnn.replace_pools(model, "soft")   # ['maxpool', 'avgpool']
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from torch import nn

from .factory import GLOBAL_ONLY_POOLS, WINDOW_ONLY_POOLS, create_pool

_WINDOW_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_TYPES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                   nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_DIMS = {nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveMaxPool1d: 1,
         nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveMaxPool2d: 2,
         nn.MaxPool3d: 3, nn.AvgPool3d: 3, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool3d: 3}


def _is_global(output_size) -> bool:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    return all(s == 1 for s in sizes)


def _is_timm_adaptive(module: nn.Module) -> bool:
    # timm.layers.SelectAdaptivePool2d: .pool (the adaptive pool), .flatten (nn.Flatten or
    # nn.Identity), .pool_type; recognised by name so that timm need not be installed
    return type(module).__name__ == "SelectAdaptivePool2d" and hasattr(module, "flatten") \
        and hasattr(module, "pool_type")


def _replacement(module: nn.Module, pool: str, kwargs: dict) -> Optional[nn.Module]:
    if isinstance(module, _WINDOW_TYPES):
        if getattr(module, "return_indices", False):
            return None  # its indices feed a MaxUnpool: no other pool has them
        if pool.lower() in GLOBAL_ONLY_POOLS:
            return None  # gmp has no window form: only the global pools change
        dilation = getattr(module, "dilation", 1)
        return create_pool(pool, "window", dims=_DIMS[type(module)], kernel_size=module.kernel_size,
                           stride=module.stride, padding=module.padding, dilation=dilation,
                           ceil_mode=module.ceil_mode, **kwargs)
    if pool.lower() in WINDOW_ONLY_POOLS:
        return None  # the adaPool family has no global form: only the window pools change
    if isinstance(module, _ADAPTIVE_TYPES):
        if getattr(module, "return_indices", False) or not _is_global(module.output_size):
            return None  # only output size 1 is a global pool
        return create_pool(pool, "global", **kwargs)
    if _is_timm_adaptive(module):
        if not module.pool_type:  # timm's "no pooling" (pool_type '')
            return None
        if not _is_global(getattr(module.pool, "output_size", 1)):
            return None
        return create_pool(pool, "global", flatten=isinstance(module.flatten, nn.Flatten), **kwargs)
    return None


def replace_pools(
    model: nn.Module,
    pool: str,
    *,
    types: Optional[Iterable[type]] = None,
    filter: Optional[Callable[[str, nn.Module], bool]] = None,
    **pool_kwargs,
) -> list[str]:
    """Replace, in place, every pool of ``model`` by ``pool`` (a ``create_pool`` name:
    ``"soft"``, ``"stochastic"``, ``"l2"``, ``"mixed"``, ...) and return the replaced
    submodules' names.

    * ``nn.MaxPoolNd`` / ``nn.AvgPoolNd`` become the window form with the same kernel,
      stride, padding, dilation and ceil_mode (max pools with ``return_indices`` are left
      alone: a ``MaxUnpool`` needs their indices; for ``"gmp"``, which has no window form,
      every window pool is left alone);
    * ``nn.AdaptiveAvgPoolNd`` / ``nn.AdaptiveMaxPoolNd`` with output size 1 become the
      global form (N x C x 1..., as before); other output sizes are left alone;
    * timm's ``SelectAdaptivePool2d`` becomes the global form with its flatten kept.

    ``types`` limits the replacement to modules of those classes; ``filter(name, module)``
    returning False leaves a module alone. Each new pool takes the train/eval mode of the
    module it replaces. ``pool_kwargs`` go to ``create_pool`` (``beta``,
    ``seed``, ``p``, ...). Padded positions are never part of a window in poolexport's pools
    (``count_include_pad=False``), which only matters for average pools with padding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_pools: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(pool, str):
        raise TypeError(f"replace_pools: pool must be a pool name such as 'soft', got {type(pool).__name__}")
    types = tuple(types) if types is not None else None
    plan, made = [], {}  # made: id(old pool) -> its replacement, so an aliased pool stays one module
    # every name a module is registered under (a pool reachable under two names is
    # replaced under both); parents before their children
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or (types is not None and not isinstance(module, types)):
            continue
        if any(name.startswith(done + ".") for done, _ in plan):
            continue  # inside a pool already replaced (timm's SelectAdaptivePool2d.pool)
        if filter is not None and not filter(name, module):
            continue
        new = made[id(module)] if id(module) in made else _replacement(module, pool, pool_kwargs)
        if new is not None:
            # a fresh module is in train mode: take the replaced module's mode (an eval
            # model's stochastic pools must not sample)
            new.train(module.training)
            made[id(module)] = new
            plan.append((name, new))
    for name, new in plan:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return [name for name, _ in plan]

