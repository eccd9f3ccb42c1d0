"""A predicted mask as a DICOM Segmentation (highdicom): the standard way back into a clinical archive.

The mask is written at one pyramid level of the prediction: the finest whose
longer side is at most ``max_side`` (level 0 when it fits), so memory stays
bounded; the level and its downsample are named in the file's
``ContentDescription`` and in the log.  Frames are tiles of the total pixel
matrix (``TILED_FULL``-style geometry of a whole-slide image); empty tiles are
left out.  Segments are the classes: a binary model's one class
(``class_name``), or classes 1.. of a multi-class model named by
``class_names``.

The Segmentation references its source image.  When the slide is a DICOM WSI
(read by wsidicom), that is the slide's base level: the SEG joins the slide's
study (Study Instance UID, patient and specimen attributes) and shares its
Frame of Reference, so viewers overlay it.  Other slides (TIFF, SVS, NDPI, ...)
have no DICOM identity; the source is then described by a minimal VL Whole
Slide Microscopy image header (no pixel data) with the slide's geometry and
pixel size, and UIDs derived from the slide id, so every SEG of one slide
shares a study and frame of reference.  Patient attributes stay empty.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from wsiseg.errors import DicomSegError
from wsiseg.store.prediction import Prediction
from wsiseg.utils.io import atomic_path

log = logging.getLogger(__name__)

WSM_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
TILE = 512  # frame side of the Segmentation
MAX_SIDE = 8192


def slide_uid(slide_id: str, role: str) -> str:
    """A UID derived from ``slide_id`` and ``role`` (``study``, ``series``, ``frame``, ``image``): the same for every run."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["wsiseg", slide_id, role])


def source_description(slide_id: str, shape: tuple[int, int], mpp: float, tile: int = TILE):
    """A minimal VL Whole Slide Microscopy image header (no pixel data) of a slide of ``shape`` (h, w) px
    at ``mpp`` micrometres per pixel, for a slide that is not a DICOM file."""
    from pydicom.dataset import Dataset

    height, width = shape
    spacing = [f"{mpp / 1000:.9g}"] * 2  # mm, row then column
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = WSM_IMAGE, slide_uid(slide_id, "image")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = slide_uid(slide_id, "study"), slide_uid(slide_id, "series")
    ds.FrameOfReferenceUID = slide_uid(slide_id, "frame")
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SM", "", "", "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, ""
    ds.ContainerIdentifier, ds.IssuerOfTheContainerIdentifierSequence = slide_id, []
    specimen = Dataset()
    specimen.SpecimenIdentifier, specimen.SpecimenUID = slide_id, slide_uid(slide_id, "specimen")
    specimen.IssuerOfTheSpecimenIdentifierSequence, specimen.SpecimenPreparationSequence = [], []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = height, width
    ds.NumberOfFrames = -(-height // tile) * -(-width // tile)
    ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]  # rows along -y, columns along -x of the slide (DICOM's usual)
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0, 0
    ds.TotalPixelMatrixOriginSequence = [origin]
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness, measures.SpacingBetweenSlices = spacing, 0.001, 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def dicom_source(source: str | Path | None):
    """The base-level DICOM header of ``source`` when it is a DICOM WSI (folder or file), else None."""
    if source is None:
        return None
    from wsiseg.readers.dicom import DicomReader, is_dicom

    path = Path(source)
    if not path.exists() or not is_dicom(path):
        return None
    reader = DicomReader(path)
    try:
        return reader.base_dataset
    finally:
        reader.close()


def segment_names(prediction: Prediction, class_name: str, class_names: Sequence[str] | None) -> list[str]:
    """One name per segment: ``class_name`` for a binary prediction, else the names of classes 1.."""
    from wsiseg.report import class_label

    classes = int(prediction.attrs.get("classes", 1))
    if classes == 1:
        return [class_name]
    names = class_names or prediction.attrs.get("class_names")
    return [class_label(c, names) for c in range(1, classes)]


def write_dicom_seg(
    prediction: str | Path,
    out: str | Path,
    source: str | Path | None = None,
    class_name: str = "foreground",
    class_names: Sequence[str] | None = None,
    max_side: int = MAX_SIDE,
    mpp: float | None = None,
) -> Path:
    """Write the mask of ``prediction`` as a DICOM Segmentation at ``out`` (see the module docstring).

    ``source`` is the slide as listed in the sample sheet (a DICOM WSI is
    referenced, anything else described); ``mpp`` is level 0's pixel size
    (default: the prediction store's ``mpp`` attribute, else the DICOM
    source's PixelSpacing).  Returns ``out``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from wsiseg.modelcard import wsiseg_version

    pred = Prediction(prediction)
    slide_id = str(pred.attrs.get("slide_id", pred.path.stem))
    k = pred.level_for(max_side)
    factor = 2**k
    reference = dicom_source(source)
    mpp = mpp or pred.attrs.get("mpp")
    if reference is not None:
        if (reference.TotalPixelMatrixRows, reference.TotalPixelMatrixColumns) != pred.shape:
            raise DicomSegError(
                f"{prediction}: prediction shape {pred.shape} differs from the DICOM slide {source} "
                f"({reference.TotalPixelMatrixRows}, {reference.TotalPixelMatrixColumns})"
            )
        spacing = [
            float(v) * factor for v in reference.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        ]
    elif mpp:
        reference = source_description(slide_id, pred.shape, float(mpp))
        spacing = [float(mpp) / 1000 * factor] * 2
    else:
        raise DicomSegError(
            f"{prediction}: the slide's pixel size is unknown, and a DICOM Segmentation needs one; "
            "give the slide an `mpp` (sample sheet) or a default pixel size"
        )
    names = segment_names(pred, class_name, class_names)
    mask = pred.mask_plane(k)
    if mask.max(initial=0) > len(names):
        raise DicomSegError(
            f"{prediction}: mask values up to {int(mask.max())} but only {len(names)} segment(s) {names}"
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name="wsiseg", family=codes.cid7162.ArtificialIntelligence, version=wsiseg_version()
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            # class names are the project's own: a local code (scheme "99WSISEG") whose meaning is the name
            segmented_property_type=hd.sr.CodedConcept(f"C{i}", "99WSISEG", name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, name in enumerate(names, start=1)
    ]
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=spacing,
        slice_thickness=float(
            reference.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].get("SliceThickness") or 0.001
        ),
    )
    description = f"level {k} (downsample {factor}) of the wsiseg prediction of {slide_id}"
    seg = hd.seg.Segmentation(
        source_images=[reference],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="wsiseg",
        manufacturer_model_name="wsiseg",
        software_versions=wsiseg_version(),
        device_serial_number="0",
        content_description=description[:64],  # LO: 64 characters at most
        content_label="WSISEG",
        series_description=f"wsiseg {slide_id} level {k}"[:64],
        tile_pixel_array=True,
        tile_size=(TILE, TILE),
        pixel_measures=measures,
        omit_empty_frames=True,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        seg.save_as(tmp)
    log.info(
        "dicomseg %s: %s, %dx%d px, %d segment(s) %s, %d non-empty frame(s) -> %s",
        slide_id,
        description,
        mask.shape[1],
        mask.shape[0],
        len(names),
        names,
        int(seg.NumberOfFrames),
        out,
    )
    return out
