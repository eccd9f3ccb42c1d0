"""Annotation sources rasterised block by block onto a slide's pixel grid, layered as ``readers/``: ``base`` (the
:class:`~wsiseg.annotations.base.MaskSource` protocol; imports no sibling), one module per kind (``rle_table``,
``polygons``, ``images``), and ``masks`` (:func:`~wsiseg.annotations.masks.open_mask` picks the kind for a file).

``from wsiseg.masks import Ring`` (the flat module these replaced) keeps working: names not found here are
looked up in the modules above when first asked for.
"""

from wsiseg._legacy import forward_to

__getattr__ = forward_to(
    "wsiseg.annotations",
    "wsiseg.annotations.masks",
    "wsiseg.annotations.base",
    "wsiseg.annotations.rle_table",
    "wsiseg.annotations.polygons",
    "wsiseg.annotations.images",
)
