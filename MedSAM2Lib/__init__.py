"""MedSAM2 for 3D Slicer: everything that is not Qt (network, predictor, preprocessing, Slicer logic, CLI)."""

__version__ = "0.1.0"
