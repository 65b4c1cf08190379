"""Cost analysis: parameters, MACs (FLOPs = 2 x MACs), bytes, arithmetic intensity, roofline."""

from .counter import Cost, CostReport, count
from .hand_count import mobilenet_table2, mobilenet_hand_count

__all__ = ["Cost", "CostReport", "count", "mobilenet_hand_count", "mobilenet_table2"]
