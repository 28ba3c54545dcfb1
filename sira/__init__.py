"""SIRA: an open risk-model platform for payments, on Ray."""

__version__ = "0.1.0"
