"""Keras integrations: `GeometryMonitor`, a callback that logs boundary geometry to TensorBoard during `fit`."""
from tfgeom.monitor import MEASURES, GeometryMonitor

__all__ = ["GeometryMonitor", "MEASURES"]
