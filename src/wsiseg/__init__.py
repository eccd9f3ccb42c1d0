"""wsiseg: reproducible semantic segmentation of whole-slide images."""

__version__ = "0.1.0"
