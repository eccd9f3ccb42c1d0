"""Which slides a run uses: the sample sheet (``sheet``), sheets for datasets in their download layout
(``layouts``), and group k-fold splits (``folds``).

``from wsiseg.samples import read_samples`` (the flat module this package replaced) keeps working: names not
found here are looked up in :mod:`wsiseg.samples.sheet` when first asked for.
"""

from wsiseg._legacy import forward_to

__getattr__ = forward_to("wsiseg.samples", "wsiseg.samples.sheet")
