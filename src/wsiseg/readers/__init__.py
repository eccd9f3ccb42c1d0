"""Source slide readers: one module per backend (tifffile/raster in ``slide``, ``openslide``, ``dicom``) and
one ``registry`` that picks the backend for a file (``convert.reader``)."""
