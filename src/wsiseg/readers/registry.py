"""Which library reads a slide: tifffile, OpenSlide or wsidicom (``convert.reader``).

``auto`` picks per file:

* a folder of ``.dcm`` files, or a DICOM file → ``dicom`` (wsidicom);
* PNG/JPEG, and TIFFs that are plain, OME or Aperio SVS → ``tifffile``
  (bit-exact, the original pixels as stored);
* the vendor formats OpenSlide recognises (Hamamatsu NDPI/VMS, 3DHistech
  MRXS, Leica SCN, Ventana BIF, Philips TIFF, Sakura, Trestle, ...) →
  ``openslide``: these need vendor logic (tile overlaps, several main images,
  sparse tiles, files in a folder) that a plain TIFF reader does not apply;
* anything else is refused in one line naming the file and the backends tried.

An MRXS slide may be named by its ``.mrxs`` file or by its data folder.
``convert.reader`` forces one backend for every slide (e.g. ``openslide`` for
a TIFF whose layout tifffile misreads).
"""

from __future__ import annotations

from pathlib import Path

import tifffile

from wsiseg.errors import SlideError
from wsiseg.readers import limits
from wsiseg.readers.base import Reader, default_workers
from wsiseg.readers.dicom import DicomReader, is_dicom
from wsiseg.readers.openslide import OpenSlideReader, detect
from wsiseg.readers.raster import RASTER_SUFFIXES, open_raster
from wsiseg.readers.tiff import open_tiff
from wsiseg.utils.io import check_input_file

READERS = ("auto", "tifffile", "openslide", "dicom")
TIFFFILE_VENDORS = (None, "generic-tiff", "aperio")  # OpenSlide's names of the formats tifffile reads as they are


def mrxs_file(path: Path) -> Path:
    """The ``.mrxs`` file of an MRXS data folder named instead of it (else ``path``)."""
    sibling = path.with_name(path.name + ".mrxs")
    return sibling if path.is_dir() and sibling.is_file() else path


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def is_tiff(path: Path) -> bool:
    """Whether ``path`` starts like a TIFF or BigTIFF file."""
    with open(path, "rb") as fh:
        return fh.read(4) in TIFF_MAGIC


def choose_backend(path: Path) -> str:
    """The backend ``auto`` picks for ``path`` (see the module docstring); a file no backend
    reads is a :class:`SlideError` naming it and each backend tried."""
    if path.is_dir() or is_dicom(path):
        return "dicom"
    if path.suffix.lower() in RASTER_SUFFIXES:
        return "tifffile"
    vendor = detect(path)
    if vendor not in TIFFFILE_VENDORS:
        return "openslide"
    if vendor is not None or is_tiff(path):
        return "tifffile"
    raise SlideError(
        f"{path}: cannot read as TIFF, nor by any other backend (tried tifffile: no TIFF header; "
        "openslide: not a format it recognises; dicom: not a DICOM file)"
    )


def open_backend(path: str | Path, reader: str, workers: int, max_segment_bytes: int, max_decoded_pixels: int):
    """``(reader, TiffFile or None)`` for ``path`` through backend ``reader`` (``auto``: :func:`choose_backend`)."""
    if reader not in READERS:
        raise SlideError(f"{path}: unknown reader {reader!r}; expected one of {', '.join(READERS)}")
    path = mrxs_file(Path(path))
    if path.is_dir() and not is_dicom(path):
        raise SlideError(
            f"{path}: is a directory, expected an image file (or a DICOM WSI: a folder of .dcm files; it holds none)"
        )
    if not path.is_dir():
        path = check_input_file(path, "image file", SlideError)
    backend = choose_backend(path) if reader == "auto" else reader
    if backend == "dicom":
        return DicomReader(path, workers), None
    if backend == "openslide":
        return OpenSlideReader(path, workers), None
    if path.suffix.lower() in RASTER_SUFFIXES:
        return open_raster(path, max_decoded_pixels), None
    return open_tiff(path, workers, max_segment_bytes)


def describe(reader) -> dict:
    """Plain facts about an open reader: ``backend``, ``vendor``, ``levels`` ([h, w] each) and ``associated`` images."""
    if isinstance(reader, (OpenSlideReader, DicomReader)):
        backend = "openslide" if isinstance(reader, OpenSlideReader) else "dicom"
        return {
            "backend": backend,
            "vendor": reader.vendor,
            "levels": [list(s) for s in reader.levels],
            "associated": reader.associated,
        }
    series = getattr(reader, "series", None)
    if series is None:  # PNG/JPEG
        return {"backend": "imagecodecs", "vendor": None, "levels": [list(reader.shape)], "associated": []}
    levels = [[int(level.shape[level.axes.index(a)]) for a in "YX"] for level in series.levels]
    others = [s.name or s.kind for s in series.parent.series[1:]]
    return {"backend": "tifffile", "vendor": series.kind, "levels": levels, "associated": others}


def open_reader(
    path: str | Path,
    workers: int | None = None,
    max_segment_bytes: int | None = None,
    max_decoded_pixels: int | None = None,
    reader: str = "auto",
) -> tuple[Reader, tifffile.TiffFile | None]:
    """A raw-pixel reader for any supported slide, and the TiffFile to close (None unless read by tifffile).

    ``reader`` picks the backend: ``tifffile``, ``openslide``, ``dicom``, or
    ``auto`` (per file, see :mod:`wsiseg.readers.registry`).  Strips over
    :data:`~wsiseg.readers.limits.STREAM_SEGMENT_BYTES` decoded are streamed when their
    compression allows; other segments over ``max_segment_bytes`` (default
    :data:`~wsiseg.readers.limits.MAX_SEGMENT_BYTES`) are rejected.  PNG/JPEG images declaring more
    than ``max_decoded_pixels`` (default :data:`~wsiseg.readers.limits.MAX_DECODED_PIXELS`) are
    refused before decoding; TIFFs are streamed and not limited."""
    return open_backend(
        path,
        reader,
        workers or default_workers(),
        max_segment_bytes or limits.MAX_SEGMENT_BYTES,
        max_decoded_pixels or limits.MAX_DECODED_PIXELS,
    )
