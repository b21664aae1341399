"""Deterministic replay of the Bac Giang OCOP fair (TikTok Shop, 24 June 2023) and its exact oracle.

``FairReplay(OCOP_FAIR, seed)`` generates the fair's events lazily, minute by minute; ``replay.oracle`` is the
ground truth counted from exactly what was emitted. ``scaled(OCOP_FAIR, 0.01)`` gives a smaller fair.
"""

from stream.replay.generator import FairReplay, MinuteSlice, StreamPlan
from stream.replay.oracle import ChannelTotals, Oracle, OracleBuilder, WindowTotals
from stream.replay.profile import OCOP_FAIR, FairProfile, Product, scaled

__all__ = [
    "OCOP_FAIR",
    "ChannelTotals",
    "FairProfile",
    "FairReplay",
    "MinuteSlice",
    "Oracle",
    "OracleBuilder",
    "Product",
    "StreamPlan",
    "WindowTotals",
    "scaled",
]
