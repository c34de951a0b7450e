"""Pooling and attention modules, one concept per file."""
from .soft_pool import SoftPool1d, SoftPool2d, SoftPool3d, SoftPoolReduce
from .stochastic_pool import StochasticPool1d, StochasticPool2d, StochasticPool3d, StochasticPoolReduce
