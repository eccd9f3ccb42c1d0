"""Import paths of modules that moved into subpackages keep working (``import wsiseg.codecs``, pickles).

wsiseg's modules lived flat in ``wsiseg/`` until the package was reorganised by role (see
ARCHITECTURE.md).  Code, notebooks and checkpoints written before that import the old paths; a finder
on ``sys.meta_path`` answers each old path with the module that now holds its code, so both names
refer to one module object (``wsiseg.codecs is wsiseg.store.codecs``) and nothing is loaded twice.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers take it as True)

if TYPE_CHECKING:  # typing's names cost an import that `wsiseg --help` does not need
    from typing import Any, Callable

MOVED = {
    "augment": "wsiseg.nn.augment",
    "backends": "wsiseg.readers.registry",
    "bands": "wsiseg.store.bands",
    "checks": "wsiseg.config.checks",
    "codecs": "wsiseg.store.codecs",
    "configdoc": "wsiseg.config.doc",
    "data": "wsiseg.nn.data",
    "datasets": "wsiseg.samples.layouts",
    "dicom_reader": "wsiseg.readers.dicom",
    "folds": "wsiseg.samples.folds",
    "instances": "wsiseg.imaging.instances",
    "io": "wsiseg.utils.io",
    "layout": "wsiseg.store.layout",
    "logs": "wsiseg.utils.logs",
    "losses": "wsiseg.nn.losses",
    "masks": "wsiseg.annotations",
    "model": "wsiseg.nn.module",
    "openslide_reader": "wsiseg.readers.openslide",
    "params": "wsiseg.config.schema",
    "postprocess": "wsiseg.imaging.postprocess",
    "predstore": "wsiseg.store.prediction",
    "prefetch": "wsiseg.utils.prefetch",
    "settings": "wsiseg.config.params",
    "slide": "wsiseg.readers",
    "stain": "wsiseg.imaging.stain",
    "tilecopy": "wsiseg.store.tilecopy",
    "tissue": "wsiseg.imaging.tissue",
    "vector": "wsiseg.imaging.vector",
    "views": "wsiseg.imaging.views",
}
"""Old module name (below ``wsiseg``) -> the module that holds its code now."""


class _Alias:
    """Finds ``wsiseg.<old name>`` and loads it as the module it moved to (a meta path finder and its loader;
    the ``importlib.abc`` base classes are left out: importing them costs more than the rest of ``wsiseg --help``)."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "wsiseg" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(MOVED[spec.name.rpartition(".")[2]])
        spec.loader_state = module.__spec__  # importlib sets __spec__ to the alias's: put it back
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """The target module ran when it was imported: only restore its own ``__spec__``."""
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (importing ``wsiseg`` calls this)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())


def forward_to(package: str, *modules: str) -> Callable[[str], Any]:
    """A package's ``__getattr__`` that finds the names of the flat module it replaced in ``modules``
    (imported when first asked for, so importing the package costs nothing)."""

    def __getattr__(name: str) -> Any:
        import importlib.util

        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule not imported yet
            return importlib.import_module(f"{package}.{name}")
        for module in modules:
            found = getattr(importlib.import_module(module), name, _MISSING)
            if found is not _MISSING:
                return found
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


_MISSING = object()
