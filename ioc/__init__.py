"""mlioc: an EPICS-native machine-learning IOC (ONNX Runtime inference over Channel Access and PV Access)."""

__version__ = "0.1.0"
