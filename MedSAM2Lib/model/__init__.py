"""The MedSAM2 network in plain torch, one module per part."""

from .medsam2 import ImageFeatures, MedSAM2, MemoryContext, SliceOutput, SpatialMemory

__all__ = ["ImageFeatures", "MedSAM2", "MemoryContext", "SliceOutput", "SpatialMemory"]
