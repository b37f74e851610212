"""radproto: suggests the imaging protocol for a radiology order."""

__version__ = "0.1.0"
