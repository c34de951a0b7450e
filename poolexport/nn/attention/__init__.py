"""Attention blocks with swappable inner pools: SE, ECA, CBAM."""
from .cbam import CBAM, ChannelAttention, SpatialAttention
from .eca import ECA, eca_kernel_size
from .se import SE

__all__ = ["SE", "ECA", "CBAM", "ChannelAttention", "SpatialAttention", "eca_kernel_size"]
