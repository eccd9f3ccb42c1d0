"""Every error wsiseg raises for a problem with the user's input, configuration or files.

One hierarchy, one module (as zarr's ``errors.py``): :class:`WsisegError` is the base, and the command
line prints any of them as one line (the message names the file or the config key and what is wrong),
while any other exception is a bug and keeps its traceback.  Each class stays importable from the module
that raised it before this module existed (``wsiseg.readers.slide.SlideError``, ``wsiseg.rle.RLEError``, ...).

``WsisegError`` derives from ``ValueError``, as every one of these did, so ``except ValueError`` in code
written against older versions still catches them.
"""

from __future__ import annotations


class WsisegError(ValueError):
    """A problem with the user's input, configuration or files; the message says which and what is wrong."""


class ConfigError(WsisegError):
    """A configuration or parameter value that cannot be used, named by its key (``predict.tile``, ...)."""


class SampleSheetError(WsisegError):
    """A sample sheet that cannot be used; the message names the file and row."""


class DatasetLayoutError(WsisegError):
    """A dataset folder that does not have the expected layout; the message names the path."""


class SlideError(WsisegError):
    """A source slide that cannot be read; the message names the file."""


class ResolutionError(WsisegError):
    """A pixel size that cannot be used: non-square, zero, negative or absurd."""


class MaskError(WsisegError):
    """An annotation that cannot be used with its slide; the message names the file."""


class RLEError(WsisegError):
    """A run-length encoding that does not fit the image it describes."""


class StoreError(WsisegError):
    """A zarr store that is not the wsiseg store expected there; the message names the path."""


class PatchError(WsisegError):
    """Patch stores that cannot train a model (none, or cut at different sizes or resolutions)."""


class ModelError(WsisegError):
    """A model path that cannot be used (missing, no model card, checksum mismatch, not a checkpoint)."""


class OutputError(WsisegError):
    """An output path that would destroy something that is not this stage's own earlier output."""


class DicomSegError(WsisegError):
    """A prediction that cannot be written as a DICOM Segmentation; the message names the file."""
