"""The base of every windowed pool module: stores the window arguments, checks each one's
type and range at construction (errors name the class and the argument), and prints them.

A concrete class sets ``dims`` (1, 2 or 3) and ``_fn`` (its function in
``poolexport.functional``), and lists its own further arguments in ``_extra_args`` for
``extra_repr``; ``forward`` passes the window arguments, then ``self._extra_kwargs()``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .._window import check_window_args

_Size = Union[int, Sequence[int]]
WINDOW_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


class WindowPoolNd(nn.Module):
    dims: int = 0
    _fn = None
    _extra_args: tuple[str, ...] = ()

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False):
        super().__init__()
        check_window_args(type(self).__name__, self.dims, kernel_size, stride, padding, dilation, ceil_mode)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def _extra_kwargs(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor):
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              **self._extra_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in WINDOW_ARGS + self._extra_args)
