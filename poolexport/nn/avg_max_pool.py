"""Average and max pooling with ONNX windowing (``poolexport._window``): any padding
(including ONNX begin/end pads, 'same', 'valid'), dilation for average pooling too. The
windowed forms ``create_pool("avg"/"max"/"avgmax"/"catavgmax", "window")`` builds.

torch's conventions are available: ``count_include_pad=True`` on average pools (exported
as ONNX AveragePool ``count_include_pad=1`` where torch's own pooling takes the window),
``return_indices=True`` on max pools (torch's indices, for ``MaxUnpool``; exported with
ONNX MaxPool's Indices output). avgmax is 0.5 * (avg + max), catavgmax concatenates avg
and max on the channel axis (timm's names; seed 002's AvgMaxPool returns max + avg, twice
avgmax).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from .. import functional as F
from .._args import check_bool
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


class _AvgPoolNd(WindowPoolNd):
    _extra_args = ("count_include_pad",)

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, count_include_pad: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.count_include_pad = check_bool(type(self).__name__, "count_include_pad", count_include_pad)

    def _extra_kwargs(self) -> dict:
        return {"count_include_pad": self.count_include_pad}


class _MaxPoolNd(WindowPoolNd):
    _extra_args = ("return_indices",)

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, return_indices: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = check_bool(type(self).__name__, "return_indices", return_indices)

    def _extra_kwargs(self) -> dict:
        return {"return_indices": self.return_indices}


class AvgPool1d(_AvgPoolNd):
    dims, _fn = 1, staticmethod(F.avg_pool1d)


class AvgPool2d(_AvgPoolNd):
    dims, _fn = 2, staticmethod(F.avg_pool2d)


class AvgPool3d(_AvgPoolNd):
    dims, _fn = 3, staticmethod(F.avg_pool3d)


class MaxPool1d(_MaxPoolNd):
    dims, _fn = 1, staticmethod(F.max_pool1d)


class MaxPool2d(_MaxPoolNd):
    dims, _fn = 2, staticmethod(F.max_pool2d)


class MaxPool3d(_MaxPoolNd):
    dims, _fn = 3, staticmethod(F.max_pool3d)


class AvgMaxPool1d(WindowPoolNd):
    dims, _fn = 1, staticmethod(F.avg_max_pool1d)


class AvgMaxPool2d(WindowPoolNd):
    dims, _fn = 2, staticmethod(F.avg_max_pool2d)


class AvgMaxPool3d(WindowPoolNd):
    dims, _fn = 3, staticmethod(F.avg_max_pool3d)


class CatAvgMaxPool1d(WindowPoolNd):
    dims, _fn = 1, staticmethod(F.cat_avg_max_pool1d)


class CatAvgMaxPool2d(WindowPoolNd):
    dims, _fn = 2, staticmethod(F.cat_avg_max_pool2d)


class CatAvgMaxPool3d(WindowPoolNd):
    dims, _fn = 3, staticmethod(F.cat_avg_max_pool3d)
