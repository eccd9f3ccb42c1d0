"""Zarr stores wsiseg writes and reads: NGFF metadata (``ngff``), chunk I/O (``chunks``), pyramids
(``pyramid``), slide stores (``slide``), their JPEG codec (``codecs``), tile-copied compact stores
(``tilecopy``), band reads (``bands``), prediction stores (``prediction``) and where a stage's stores lie
(``layout``).

``from wsiseg.store import SlideStore`` (the path of the flat module this package replaced) keeps working:
names not found here are looked up in the modules above when first asked for.
"""

from wsiseg._legacy import forward_to

__getattr__ = forward_to(
    "wsiseg.store", "wsiseg.store.slide", "wsiseg.store.chunks", "wsiseg.store.pyramid", "wsiseg.store.ngff"
)
