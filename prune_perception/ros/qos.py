"""QoS profiles of the package's topics: images (sensor data) and latched metadata."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITIES = ("best_effort", "reliable")
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""For what changes seldom and every subscriber needs, late ones included (a class table)."""


def image_qos(reliability: str, depth: int) -> QoSProfile:
    """Keep-last image QoS: ``best_effort`` is the sensor-data choice, ``reliable`` the other."""
    if reliability not in RELIABILITIES:
        raise ValueError(f"reliability must be one of {RELIABILITIES}, got {reliability!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
    )
