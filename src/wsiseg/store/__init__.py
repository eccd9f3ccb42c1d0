"""Zarr stores wsiseg writes and reads: OME-NGFF slide pyramids (``slide``), their chunk codecs (``codecs``),
tile-copied compact stores (``tilecopy``), band reads (``bands``), prediction stores (``prediction``) and where
a stage's stores lie (``layout``).

``from wsiseg.store import SlideStore`` (the path of the flat module this package replaced) keeps working:
names not found here are looked up in :mod:`wsiseg.store.slide` when first asked for.
"""

from wsiseg._legacy import forward_to

__getattr__ = forward_to("wsiseg.store", "wsiseg.store.slide")
