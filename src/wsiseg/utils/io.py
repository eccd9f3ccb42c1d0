"""Small I/O helpers: safe, atomic writes of files and directory stores.

Two rules keep a user's files safe (:func:`check_output`):

- an output path that exists is replaced only when it is a complete earlier
  output of the same stage: a folder carrying this stage's marker file
  (:data:`MARKER`, written by :func:`atomic_path`; older stores: their own
  zarr metadata), or a plain file where the stage writes a file;
- an output equal to, inside, or containing one of the stage's inputs is refused.

Temporary paths are named ``.{name}.tmp-{host}-{pid}-{random}``; a job that was
killed leaves one behind, and the next run for the same target removes it
(only leftovers of that target whose process is gone, nothing else).

Replacing an earlier folder output never deletes it first: :func:`atomic_path` renames it
aside to ``.{name}.old-{host}-{pid}-{random}`` (same folder, so the same file system),
renames the new output in, and only then deletes the old copy (renamed ``.{name}.del-...``
first).  Whatever fails, one complete output stays at the target (or, when even moving back
fails, the error names where each complete copy is); a job killed between the two renames
leaves the ``.old-`` copy, which the next write of that target moves back when the target is
missing.  When deleting the old copy fails part-way (a read-only folder, a full or flaky file
system), the new output is already in place: that is a warning naming the leftover, not an
error, and the next write of the target tries again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from wsiseg.errors import OutputError, WsisegError

MARKER = ".wsiseg-output.json"  # inside a folder output: which stage wrote it

log = logging.getLogger(__name__)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_input_file(
    path: str | Path,
    kind: str,
    error: type[Exception] = WsisegError,
    missing: type[Exception] | None = None,
    empty_note: str = "",
) -> Path:
    """``path`` as a Path once it is an existing, non-empty regular file; otherwise one line naming it:
    a directory or an empty file (``empty_note`` appended) raise ``error``, a missing ``kind`` ``missing``
    (default: ``error``)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    if not path.is_file():
        raise (missing or error)(f"{path}: {kind} not found")
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file{empty_note}")
    return path


def _zarr_attrs(folder: Path) -> dict:
    """Root attributes of a zarr v2 or v3 store at ``folder`` ({} if it is none)."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        meta = folder / name
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                return {}
            return (data.get(key) if key else data) or {}
    return {}


def output_stage(folder: str | Path) -> str | None:
    """The wsiseg stage that wrote ``folder``: from its marker file, or for stores written
    before markers existed from the store's own metadata; None for anything else."""
    folder = Path(folder)
    try:
        stage = json.loads((folder / MARKER).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None
    if stage:
        return str(stage)
    attrs = _zarr_attrs(folder)
    if "checkpoints" in attrs and "slide_id" in attrs:
        return "predict"
    if isinstance(attrs.get("wsiseg"), dict) and "source" in attrs["wsiseg"]:
        return "convert"
    if {"size", "downscale", "slide_id"} <= set(attrs) and (folder / "images").is_dir():
        return "patches"
    return None


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(
    target: str | Path, stage: str | None = None, inputs: Iterable[str | Path | None] = (), folder: bool | None = None
) -> Path:
    """Raise :class:`OutputError` (one line naming the path) unless writing ``target`` is safe.

    Returns ``target`` as an absolute path. ``inputs`` are the files the stage
    reads; ``stage`` names the stage whose earlier output may be replaced;
    ``folder`` says whether the stage writes a folder (True) or a file (False)."""
    path = check_disjoint(target, inputs)
    if path.is_symlink() or not path.exists():
        return path
    if path.is_dir():
        if folder is False:
            raise OutputError(f"{target}: is a folder, expected a file path; refusing to replace it")
        found = output_stage(path)
        if found is None:
            raise OutputError(
                f"{target}: exists and is not a wsiseg output; refusing to replace it (move it or choose another path)"
            )
        if stage is not None and found != stage:
            raise OutputError(f"{target}: holds a wsiseg {found} output, not a {stage} output; refusing to replace it")
    elif not path.is_file():
        raise OutputError(f"{target}: exists and is not a regular file; refusing to replace it")
    elif folder:
        raise OutputError(
            f"{target}: is an existing file, not a wsiseg {stage or 'store'} folder; refusing to replace it"
        )
    return path


def check_disjoint(target: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Raise :class:`OutputError` when ``target`` is, lies inside or contains one of ``inputs``;
    returns ``target`` as an absolute path."""
    path = Path(os.path.abspath(Path(target).expanduser()))
    if path.parent == path:
        raise OutputError(f"{target}: cannot write an output at the file-system root")
    resolved = path.resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(os.path.abspath(Path(given).expanduser())).resolve()
        if resolved == source:
            raise OutputError(f"{target}: the output is the input {given}; choose another output path")
        if _contains(resolved, source):
            raise OutputError(f"{target}: the output would contain the input {given}; choose another output path")
        if _contains(source, resolved):
            raise OutputError(f"{target}: the output lies inside the input {given}; choose another output path")
    return path


# ``tmp``: a write in progress; ``old``: a complete earlier output moved aside; ``del``: an old copy being deleted
_TMP = re.compile(r"\.(?P<kind>tmp|old|del)-(?:(?P<host>[^-]+)-(?P<pid>\d+)-)?[0-9a-f]{8}$")


def _host() -> str:
    """This machine's short host name as it appears in temporary names (no ``-``, the field separator)."""
    return socket.gethostname().split(".")[0].replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove temporary paths that a killed earlier write of ``target`` left beside it.

    Only ``.{name}.tmp-*``, ``.{name}.old-*`` and ``.{name}.del-*`` of this very target, and
    (but for ``.del-``, which is garbage whoever left it) not those of a process on this host
    that is still running.  An ``.old-`` copy is a complete earlier output
    that a killed replace had moved aside: when ``target`` is missing it is moved back instead
    of removed.  A leftover that cannot be removed (e.g. a read-only folder inside) is a warning
    naming it, not an error.  Returns the removed paths."""
    target = Path(target)
    host = _host()
    removed = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}"
    for path in sorted(target.parent.iterdir()):
        if not path.name.startswith(prefix):
            continue
        match = _TMP.fullmatch(path.name[len(prefix) :])
        if match is None:
            continue
        if match["kind"] != "del" and match["host"] == host and _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not (target.exists() or target.is_symlink()):
            try:
                os.replace(path, target)
            except OSError as err:
                log.warning(
                    "%s: missing; its earlier output is complete at %s but could not be moved back (%s)",
                    target,
                    path,
                    err,
                )
            else:
                log.warning(
                    "%s: moved back the earlier output that an interrupted replace had left at %s", target, path
                )
            continue
        try:
            _remove(path)
        except OSError as err:
            log.warning("%s: could not remove the leftover %s (%s); delete it by hand", target, path, err)
            continue
        removed.append(path)
    return removed


def _tmp_name(target: Path, kind: str = "tmp") -> Path:
    return target.with_name(f".{target.name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _replace(tmp: Path, target: Path, keep: list[Path]) -> None:
    """Move the finished ``tmp`` onto ``target``, never deleting a complete ``target`` first.

    When neither the new nor the earlier output can be put at ``target``, ``tmp`` is appended
    to ``keep`` (the raised error names it as the new output's only copy)."""
    if not (target.exists() or target.is_symlink()) or not (tmp.is_dir() or target.is_dir()):
        os.replace(tmp, target)  # nothing there, or file over file: one atomic rename
        return
    aside = _tmp_name(target, "old")
    try:
        os.replace(target, aside)
    except OSError as err:
        raise OutputError(
            f"{target}: could not move the earlier output aside to replace it ({err}); "
            "it is unchanged, the new output was discarded"
        ) from err
    try:
        os.replace(tmp, target)
    except OSError as err:
        try:
            os.replace(aside, target)
        except OSError as back:
            keep.append(tmp)
            raise OutputError(
                f"{target}: could not move the new output in ({err}) nor the earlier one back ({back}); "
                f"the earlier output is complete at {aside}, the new one at {tmp}: move one of them to {target}"
            ) from err
        raise OutputError(
            f"{target}: could not move the new output in ({err}); the earlier output is back in place, "
            "the new one was discarded"
        ) from err
    trash = _tmp_name(target, "del")  # no longer a complete copy to move back: rename before deleting
    try:
        os.replace(aside, trash)
    except OSError:
        trash = aside
    try:
        _remove(trash)
    except OSError as err:
        log.warning(
            "%s: the new output is in place, but the earlier one could not be deleted completely (%s); "
            "delete what is left at %s (the next write of %s tries again)",
            target,
            err,
            trash,
            target.name,
        )


@contextlib.contextmanager
def atomic_path(
    target: str | Path, stage: str | None = None, inputs: Iterable[str | Path | None] = (), folder: bool | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``target``.

    Works for files and directories (e.g. zarr stores).  :func:`check_output`
    runs first (``stage``, ``inputs``, ``folder``), and a killed earlier write's leftovers
    of the same target are removed.  A folder output gets ``stage``'s marker
    file.  If the body raises, the temporary path is removed and ``target`` is
    left untouched, so an interrupted write never leaves something that looks
    complete.  An earlier folder output is moved aside before the new one is
    moved in and deleted only after (see the module docstring): a failed replace
    raises :class:`OutputError` naming where each complete copy is, a failed
    delete of the old copy only warns.
    """
    target = check_output(target, stage, inputs, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = _tmp_name(target)
    keep: list[Path] = []
    try:
        yield tmp
        if tmp.is_dir() and stage is not None:
            (tmp / MARKER).write_text(json.dumps({"stage": stage, "complete": True}))
        _replace(tmp, target, keep)
    finally:
        if not keep and (tmp.exists() or tmp.is_symlink()):
            _remove(tmp)


def release_memory() -> None:
    """Return the memory freed so far to the operating system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps freed blocks of every thread's arena for reuse, so a process that
    works through a slide in strips would otherwise hold the sum of its strips'
    high-water marks, growing with the slide's width (benchmarks/journal/predict.md;
    ``benchmarks/predict_bench.py --modes memory`` measures peak RSS).  Trimming costs a
    few milliseconds, so call it between large steps, not per tile."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
