"""Pooling and attention modules, one concept per file."""
from . import functional  # noqa: F401  (poolexport.nn.functional, as torch.nn.functional)
from .soft_pool import SoftPool1d, SoftPool2d, SoftPool3d, SoftPoolReduce
from .stochastic_pool import StochasticPool1d, StochasticPool2d, StochasticPool3d, StochasticPoolReduce
from .ada_pool import (AdaPool1d, AdaPool2d, AdaPool3d, EdscwPool1d, EdscwPool2d, EdscwPool3d, IdwPool1d, IdwPool2d,
                       IdwPool3d)
from .ada_unpool import AdaUnpool1d, AdaUnpool2d, AdaUnpool3d
from .avg_max_pool import (AvgMaxPool1d, AvgMaxPool2d, AvgMaxPool3d, AvgPool1d, AvgPool2d, AvgPool3d, CatAvgMaxPool1d,
                           CatAvgMaxPool2d, CatAvgMaxPool3d, MaxPool1d, MaxPool2d, MaxPool3d)
from .lp_pool import L2Pool1d, L2Pool2d, L2Pool3d, LpPool1d, LpPool2d, LpPool3d, LpPoolReduce
from .gem_pool import GeMPool1d, GeMPool2d, GeMPool3d, GeMPoolReduce, GlobalGeMPool
from .lse_pool import GlobalLsePool, LsePool1d, LsePool2d, LsePool3d, LsePoolReduce
from .gmp_pool import GeneralizedMaxPoolReduce, GlobalGeneralizedMaxPool
from .mixed_pool import MixedPool1d, MixedPool2d, MixedPool3d, MixedPoolReduce
from .reduce_pool import AvgMaxPoolReduce, AvgPoolReduce, CatAvgMaxPoolReduce, MaxPoolReduce
from .weighted_avg_pool import GlobalWeightedAvgPool, WeightedAvgPool1d, WeightedAvgPool2d, WeightedAvgPool3d
from .global_pool import (GlobalAvgMaxPool, GlobalAvgPool, GlobalCatAvgMaxPool, GlobalL2Pool, GlobalLpPool,
                          GlobalMaxPool, GlobalMixedPool, GlobalSoftPool, GlobalStochasticPool)
from .unpool import MaxUnpool1d, MaxUnpool2d, MaxUnpool3d
from .upsample import Upsample
from .lrn import LocalResponseNorm
from .bilinear_pool import BilinearPool
from .factory import ATTENTION_NAMES, POOL_FORMS, POOL_NAMES, create_attention, create_pool
from .replace import replace_pools
from .attention import CBAM, ECA, SE, ChannelAttention, SpatialAttention, eca_kernel_size
