"""Cost analysis: parameters, MACs (FLOPs = 2 x MACs), bytes, arithmetic intensity, roofline."""

from .counter import Cost, CostReport, count
from .seed import mobilenet_table2, seed_table

__all__ = ["Cost", "CostReport", "count", "seed_table", "mobilenet_table2"]
