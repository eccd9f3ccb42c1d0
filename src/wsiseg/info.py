"""``wsiseg info``: what a slide file or a wsiseg store says about itself (size, levels, pixel size and its source)."""

from __future__ import annotations

import json
from pathlib import Path

from wsiseg.errors import SlideError
from wsiseg.readers.slide import SourceSlide
from wsiseg.resolution import PixelSize


def source_info(path: str | Path, reader: str = "auto") -> dict:
    """Size, pyramid levels, pixel type, the backend that reads it and the pixel size (with where it was
    read) of a slide image file or DICOM WSI folder."""
    from wsiseg.readers.registry import describe as backend_facts

    with SourceSlide(path, reader=reader) as slide:
        return {
            "path": str(path),
            "kind": "slide image",
            "width": slide.width,
            "height": slide.height,
            "channels": slide.channels,
            "dtype": str(slide.dtype),
            **backend_facts(slide.reader),
            **slide.pixel_size.as_dict(),
        }


def store_info(path: str | Path) -> dict:
    """A wsiseg zarr store's kind, size, NGFF scales and recorded pixel size."""
    import zarr

    try:
        root = zarr.open_group(Path(path), mode="r")
    except Exception as err:
        raise SlideError(f"{path}: not a zarr store ({type(err).__name__}: {err})") from None
    attrs = root.attrs.asdict()
    info: dict = {"path": str(path)}
    if "multiscales" in attrs:
        meta = attrs["multiscales"][0]
        wsiseg = attrs.get("wsiseg", attrs)  # slide stores keep theirs under "wsiseg", predictions at the root
        pixel = PixelSize.from_attrs(wsiseg)
        info.update(
            kind="prediction store" if "provenance" in attrs else "slide store",
            levels=[list(root[d["path"]].shape) for d in meta["datasets"]],
            axes=[{k: a[k] for k in ("name", "unit") if k in a} for a in meta["axes"]],
            scales=[d["coordinateTransformations"][0]["scale"] for d in meta["datasets"]],
            labels=list(root["labels"].attrs.get("labels", [])) if "labels" in root else [],
            **pixel.as_dict(),
        )
        info["height"], info["width"] = info["levels"][0][-2:]
        if info["kind"] == "prediction store" and "labels" in root and "mask" in root["labels"]:
            info["height"], info["width"] = root["labels/mask/0"].shape[-2:]  # the slide's level 0 (the mask's)
            info["prob_downscale"] = float(attrs.get("prob_downscale", 1.0))  # probabilities: on the model's grid
    elif "size" in attrs and "images" in root:
        info.update(kind="patch store", patches=int(root["images"].shape[0]), **attrs)
    else:
        raise SlideError(f"{path}: not a wsiseg store (no OME-NGFF multiscales and no patch images)")
    return info


def describe(path: str | Path) -> dict:
    """:func:`store_info` for a zarr store, else :func:`source_info` (files, DICOM WSI folders)."""
    path = Path(path)
    is_zarr = path.is_dir() and any((path / name).exists() for name in (".zgroup", "zarr.json"))
    return store_info(path) if is_zarr else source_info(path)


def format_info(info: dict) -> str:
    """Human-readable lines of :func:`describe`'s result."""
    lines = [f"{info['path']}: {info['kind']}"]
    if "width" in info:
        lines.append(f"  size       {info['width']} x {info['height']} px (width x height)")
    pixel = PixelSize.from_attrs(info)
    if "mpp" in info:
        lines.append(f"  pixel size {pixel}")
        if info.get("mpp_problem"):
            lines.append(f"             {info['mpp_problem']}")
        if not pixel.known:
            lines.append("             set it with a sample-sheet `mpp` column or `convert.default_mpp`")
        else:
            lines.append(
                f"  extent     {info['width'] * pixel.mpp / 1000:.2f} x {info['height'] * pixel.mpp / 1000:.2f} mm"
            )
    for key in (
        "backend",
        "vendor",
        "channels",
        "dtype",
        "levels",
        "associated",
        "axes",
        "scales",
        "labels",
        "prob_downscale",
        "patches",
        "size",
        "downscale",
        "patch_mpp",
    ):
        if key in info:
            lines.append(f"  {key:<10} {json.dumps(info[key])}")
    return "\n".join(lines)
