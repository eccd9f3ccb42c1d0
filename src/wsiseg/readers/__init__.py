"""Source slide readers, layered as nnU-Net's ``imageio``: ``base`` (the :class:`Reader` interface; imports no
sibling), one module per backend (``tiff``, ``raster``, ``openslide``, ``dicom``), ``registry`` (picks the backend
for a file: :func:`~wsiseg.readers.registry.open_reader`), and ``slide`` (:class:`~wsiseg.readers.slide.SourceSlide`:
level 0 as uint8 RGB, whatever the backend).

``from wsiseg.slide import SourceSlide`` (the flat module these replaced) keeps working: names not found here
are looked up in the modules above when first asked for.
"""

from wsiseg._legacy import forward_to

__getattr__ = forward_to(
    "wsiseg.readers",
    "wsiseg.readers.slide",
    "wsiseg.readers.registry",
    "wsiseg.readers.base",
    "wsiseg.readers.tiff",
    "wsiseg.readers.raster",
    "wsiseg.readers.limits",
)
