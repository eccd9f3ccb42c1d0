"""Checks of a run's configuration, made when Snakemake parses the workflow (also in ``snakemake -n``).

Every problem is one line naming the config file and the key (with the
closest valid key or value when a name is misspelt), found in seconds
before any job runs.  Nothing here imports torch: a dry run stays fast.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from wsiseg.config.networks import ARCHS, ENCODERS, network_problems
from wsiseg.errors import ConfigError
from wsiseg.modelcard import model_problems
from wsiseg.utils.tracking import tracking_problem


def _suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean `x`?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    if not close:
        lowered = {str(c).lower(): str(c) for c in choices}
        close = [lowered[str(word).lower()]] if str(word).lower() in lowered else []
    return f" (did you mean `{close[0]}`?)" if close else ""


def _has_path(data: Any, path: Sequence[Any]) -> bool:
    for key in path:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return False
    return True


def source_of(path: Sequence[Any], configfiles: Sequence[str | Path]) -> str:
    """The last of ``configfiles`` that sets the key ``path`` (later files override), else ``--config``."""
    for file in reversed([str(f) for f in configfiles]):
        try:
            data = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if _has_path(data, path):
            return file
    return "--config"


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _schema_at(schema: Mapping, path: Sequence[Any]) -> Mapping:
    for key in path:
        if isinstance(key, int):
            schema = schema.get("items", {})
        else:
            schema = schema.get("properties", {}).get(key, {})
    return schema


def schema_problem(config: Mapping, schema: Mapping, configfiles: Sequence[str | Path] = ()) -> str | None:
    """The first problem of ``config`` against the JSON ``schema``, as one line, or None.

    Unknown keys name the closest valid key; values outside an enum name the closest choice."""
    from jsonschema import Draft202012Validator

    errors = sorted(
        Draft202012Validator(schema).iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path)))
    )
    if not errors:
        return None
    error = errors[0]
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = _schema_at(schema, path).get("properties", {})
        unknown = sorted(k for k in error.instance if k not in known)[0]
        full = [*path, unknown]
        hint = _suggest(unknown, known) or f" (valid keys: {', '.join(known)})"
        return f"{source_of(full, configfiles)}: unknown key `{_dotted(full)}`{hint}"
    if error.validator == "enum":
        where = source_of(path, configfiles)
        return f"{where}: `{_dotted(path)}` is {error.instance!r}, expected one of {', '.join(map(str, error.validator_value))}{_suggest(error.instance, error.validator_value)}"
    if error.validator == "required":
        return f"{source_of(path, configfiles)}: {error.message} in `{_dotted(path)}`"
    return f"{source_of(path, configfiles)}: `{_dotted(path)}`: {error.message}"


def check_schema(config: Mapping, schema_file: str | Path, configfiles: Sequence[str | Path] = ()) -> None:
    """Raise :class:`ConfigError` with :func:`schema_problem`'s line when ``config`` breaks the schema."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    problem = schema_problem(config, schema, configfiles)
    if problem:
        raise ConfigError(problem)


# (section, physical key, pixel key): two ways to set one thing
EXCLUSIVE = (
    ("patches", "mpp", "downscale"),
    ("predict", "min_area_um2", "min_area"),
    ("predict", "max_hole_um2", "max_hole"),
)


def _rank(path: Sequence[str], configfiles: Sequence[str | Path]) -> int:
    """Precedence of the config file that sets ``path`` to a value (index in ``configfiles``, lowest first;
    ``len(configfiles)`` for ``--config``)."""
    where = source_of(path, configfiles)
    files = [str(f) for f in configfiles]
    return files.index(where) if where in files else len(files)


def resolve_exclusive(config: dict, configfiles: Sequence[str | Path] = ()) -> None:
    """Settle the keys of :data:`EXCLUSIVE` in the config as written (before defaults): a physical and a
    pixel setting of one thing in the same file is a :class:`ConfigError`; set in two layered files
    (``--configfile`` over config.yaml), the later one wins (a winning pixel setting clears the physical one)."""
    for section, physical, pixel in EXCLUSIVE:
        values = config.get(section) or {}
        if values.get(physical) is None or pixel not in values:
            continue
        high, low = _rank([section, physical], configfiles), _rank([section, pixel], configfiles)
        if high == low:
            where = source_of([section, physical], configfiles)
            raise ConfigError(
                f"{where}: `{section}.{physical}` ({values[physical]}) and `{section}.{pixel}` ({values[pixel]}) are both set: "
                f"keep one ({physical}: a physical size, the same on every scanner; {pixel}: level-0 pixels), "
                f"e.g. delete the `{pixel}` line"
            )
        if low > high:
            values[physical] = None


ORDERED = frozenset({"train.augment"})  # mappings whose order means something: the augmentation pipeline's


def canonical(value: Any, path: str = "") -> Any:
    """``value`` with every mapping's keys in sorted order (lists keep theirs), except the
    mappings at :data:`ORDERED` paths, whose order is part of their meaning.

    Snakemake compares ``params`` as text, so the same settings listed in
    another order would otherwise rerun jobs."""
    if isinstance(value, Mapping):
        keys = list(value) if path in ORDERED else sorted(value, key=str)
        return {k: canonical(value[k], f"{path}.{k}" if path else str(k)) for k in keys}
    if isinstance(value, list):
        return [canonical(v, path) for v in value]
    return value


def plan_problems(
    config: Mapping,
    splits: Mapping[str, str],
    shape_of: Callable[[str], tuple[int, int] | None] | None = None,
    images: Mapping[str, str] | None = None,
    training: bool = True,
    pixel_size_of: Callable[[str], Any] | None = None,
    model_resolution: Mapping | None = None,
) -> list[str]:
    """Problems of a validated ``config`` (schema defaults filled in) with this sample sheet.

    ``splits`` maps slide id to split; ``images`` maps slide id to its image
    path and ``shape_of(path)`` gives an image's (height, width) from its header
    (None when unknown), to check that patches fit the slides; ``training`` says
    whether the run trains a model.  ``pixel_size_of(slide_id)`` gives a slide's
    :class:`~wsiseg.resolution.PixelSize` (sample sheet, header, default) for the
    settings that need one; ``model_resolution`` is ``predict.model``'s card's."""
    problems = []
    train, predict, patches = config["train"], config["predict"], config["patches"]
    if train["arch"].lower() not in {a.lower() for a in ARCHS}:
        problems.append(
            f"`train.arch` is {train['arch']!r}, not a segmentation-models-pytorch architecture{_suggest(train['arch'], ARCHS)}; choose from {', '.join(ARCHS)}"
        )
    encoder = train["encoder"]
    if encoder not in ENCODERS and not encoder.startswith("tu-"):
        problems.append(
            f"`train.encoder` is {encoder!r}, not a segmentation-models-pytorch encoder{_suggest(encoder, ENCODERS)} (timm encoders: `tu-<timm name>`)"
        )
    if training:
        sides = {"patches.size": patches.get("size"), "predict.tile": predict.get("tile")}
        problems += network_problems(train, {k: v for k, v in sides.items() if v is not None})
    if training and train.get("contour_weight") and patches.get("classes") not in (None, 1):
        problems.append(
            f"`train.contour_weight` ({train['contour_weight']}) needs binary masks, but `patches.classes` is "
            f"{patches['classes']}: set it to 0, or patches.classes to 1"
        )
    if training and predict.get("split_objects") == "contour" and not train.get("contour_weight"):
        problems.append(
            "`predict.split_objects` contour needs a contour-aware model: set `train.contour_weight` > 0 "
            "(e.g. 1.0), or use watershed"
        )
    if training and (tracker := tracking_problem(train.get("logger", "csv"))):
        problems.append(tracker)
    if predict["overlap"] >= predict["tile"]:
        problems.append(
            f"`predict.overlap` ({predict['overlap']}) must be smaller than `predict.tile` ({predict['tile']})"
        )
    if patches.get("max_coverage", 1) < patches.get("min_coverage", 0):
        problems.append(
            f"`patches.min_coverage` ({patches['min_coverage']}) is above `patches.max_coverage` ({patches['max_coverage']})"
        )
    labelled = [s for s, split in splits.items() if split in ("train", "val")]
    if training and not train.get("folds"):
        for split in ("train", "val"):
            if not any(v == split for v in splits.values()):
                problems.append(
                    f"the sample sheet has no `{split}` slide: training needs at least one train and one val slide with a mask (or set `train.folds: k` to draw validation folds)"
                )
    if training and train.get("folds") and len(labelled) < train["folds"]:
        problems.append(
            f"`train.folds` = {train['folds']} needs at least {train['folds']} train/val slides, the sample sheet has {len(labelled)}"
        )
    if not training and predict.get("model"):  # what its model cards show: checksums, folders, mixed members
        problems += model_problems(predict["model"])
    scale_problem = _scale_problem(config, splits, pixel_size_of, model_resolution, training)
    if scale_problem:
        return [*problems, scale_problem]
    if training and shape_of is not None and images is not None and labelled:
        physical = pixel_size_of is not None and patches.get("mpp")  # a slide's pixel size matters only then
        spans, shapes = {}, {}
        # a problem only when a patch fits no slide: stop at the first slide it fits (or of unknown size),
        # so a large cohort costs one header read, not one per slide
        for s in labelled:
            spans[s] = _patch_span(patches, pixel_size_of(s) if physical else None)
            shapes[s] = shape_of(images[s])
            if shapes[s] is None or spans[s] <= max(shapes[s]):
                break
        else:
            h, w = max(shapes.values(), key=lambda hw: hw[0] * hw[1])
            how = (
                "`patches.size` x `patches.mpp` / the slide's pixel size"
                if patches.get("mpp")
                else "`patches.size` x `patches.downscale`"
            )
            problems.append(
                f"{how} = {max(spans.values())} level-0 px is larger than every train/val slide "
                f"(largest {w}x{h} px): lower `patches.size` or `patches.{'mpp' if patches.get('mpp') else 'downscale'}`"
            )
    return problems


def _patch_span(patches: Mapping, pixel: Any) -> int:
    """Level-0 pixels a patch spans on a slide of ``pixel`` size (a :class:`~wsiseg.resolution.PixelSize` or None)."""
    if patches.get("mpp") and pixel is not None and pixel.known:
        return int(round(patches["size"] * patches["mpp"] / pixel.mpp))
    return int(round(patches["size"] * patches["downscale"]))


def _scale_problem(
    config: Mapping,
    splits: Mapping[str, str],
    pixel_size_of: Callable[[str], Any] | None,
    model_resolution: Mapping | None,
    training: bool,
) -> str | None:
    """One line naming the slides without a pixel size when the run needs one for them: ``patches.mpp``
    (train/val slides; and the predicted ones, read at the model's um/px), ``predict.*_um2`` (predicted
    slides), or a ``predict.model`` trained at a physical scale over slides of several downscales."""
    if pixel_size_of is None:
        return None
    predict, patches = config["predict"], config["patches"]
    predicted = [s for s, split in splits.items() if split in ("val", "test")] if training else list(splits)
    needs: dict[str, list[str]] = {}
    if training and patches.get("mpp"):
        needs["`patches.mpp`"] = [s for s, split in splits.items() if split in ("train", "val")] + predicted
    for key in ("min_area_um2", "max_hole_um2"):
        if predict.get(key) is not None:
            needs[f"`predict.{key}`"] = predicted
    if model_resolution and model_resolution.get("mpp") and model_resolution.get("downscale") is None:
        needs[f"`predict.model` (trained at {model_resolution['mpp']:g} um/px on slides of several pixel sizes)"] = (
            predicted
        )
    for purpose, slide_ids in needs.items():
        unknown = [s for s in dict.fromkeys(slide_ids) if not pixel_size_of(s).known]
        if unknown:
            listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            return (
                f"slide(s) {listed} state no pixel size, but {purpose} needs one: set their `mpp` column in the sample sheet "
                "or `convert.default_mpp` (`wsiseg info IMAGE` shows what a slide states)"
            )
    return None


def image_pixel_size(path: str | Path, reader: str = "auto") -> Any:
    """Level 0's :class:`~wsiseg.resolution.PixelSize` as a slide states it, from the metadata of the backend
    that convert will use (``reader``: ``convert.reader``), without decoding pixels.  Unknown for PNG/JPEG
    (they state none and would be decoded whole) and for files that cannot be opened (convert reports those)."""
    from wsiseg.readers.raster import RASTER_SUFFIXES
    from wsiseg.readers.registry import open_reader
    from wsiseg.resolution import UNKNOWN

    path = Path(path)
    if not path.exists() or path.suffix.lower() in RASTER_SUFFIXES:
        return UNKNOWN
    try:
        opened, tif = open_reader(path, 1, reader=reader)
    except Exception:
        return UNKNOWN
    try:
        return opened.pixel_size
    finally:
        opened.close()
        if tif is not None:
            tif.close()


def image_shape(path: str | Path) -> tuple[int, int] | None:
    """(height, width) of an image from its header only (TIFF: level 0 of the first series;
    PNG/JPEG: :func:`wsiseg.readers.raster.declared_size`); None when the file cannot be read that way."""
    from wsiseg.readers.raster import RASTER_SUFFIXES, declared_size

    path = Path(path)
    if not path.is_file():
        return None
    try:
        if path.suffix.lower() in RASTER_SUFFIXES:
            _, width, height = declared_size(path)
            return height, width
        import tifffile

        with tifffile.TiffFile(path) as tif:
            axes, shape = tif.series[0].axes, tif.series[0].shape
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    except Exception:  # unreadable files get their own clear error from convert
        return None
