"""The project's exception tree.

Every error the product raises derives from :class:`CbctQaError` and also from the
matching built-in (``ValueError``, ``FileNotFoundError``, ...), so callers may catch
either.  Messages name the file, session or field concerned, what was expected and
the fix.
"""

from __future__ import annotations

__all__ = [
    "AttributionError",
    "CbctQaError",
    "ConfigurationError",
    "DicomError",
    "DicomWriteError",
    "DuplicateSliceError",
    "EmptyInputError",
    "InputTooLargeError",
    "MissingSlicesError",
    "MixedMatrixError",
    "ModelContractError",
    "ModelNotFoundError",
    "MultipleSeriesError",
    "NoPixelDataError",
    "NonUniformSpacingError",
    "NotCTError",
    "NotDicomError",
    "ObliqueOrientationError",
    "RtStructEmptyError",
    "RtStructError",
    "RtStructGeometryError",
    "RtStructNoMatchingRoiError",
    "RtStructOpenContourError",
    "RtStructReferenceError",
    "SeriesNotFoundError",
    "StatisticsError",
    "SynthesisError",
    "TrainingError",
    "TruncatedFileError",
    "UnknownSchemaError",
    "UnsupportedTransferSyntaxError",
]


class CbctQaError(Exception):
    """Root of every error raised by the CBCT QA monitor."""


class ConfigurationError(CbctQaError, ValueError):
    """A setting or environment variable has an invalid value."""


class DicomError(CbctQaError, ValueError):
    """A DICOM input cannot be turned into a CBCT volume."""


class EmptyInputError(DicomError, FileNotFoundError):
    """The folder, zip or file list holds no files."""


class NotDicomError(DicomError):
    """A file is not a DICOM Part 10 file."""


class TruncatedFileError(DicomError):
    """A DICOM file ends before its declared content (incomplete copy or transfer)."""


class NoPixelDataError(DicomError):
    """A DICOM file has no Pixel Data element."""


class NotCTError(DicomError):
    """The series is not CT (Modality is not CT)."""


class MultipleSeriesError(DicomError):
    """The input holds several CT series and none was chosen."""


class DuplicateSliceError(DicomError):
    """Two slices share the same position along the slice normal."""


class MissingSlicesError(DicomError):
    """A gap between slices exceeds 1.5 x the median spacing."""


class NonUniformSpacingError(DicomError):
    """Slice spacing varies beyond the tolerance."""


class MixedMatrixError(DicomError):
    """Slices differ in rows/columns or pixel spacing."""


class ObliqueOrientationError(DicomError):
    """The image orientation is oblique (not axis-aligned)."""


class UnsupportedTransferSyntaxError(DicomError):
    """Pixel data is compressed with a transfer syntax no installed handler decodes."""


class InputTooLargeError(DicomError):
    """The series exceeds the configured slice or pixel limit."""


class SynthesisError(CbctQaError, ValueError):
    """Invalid parameters for the simulated cohort."""


class ModelContractError(CbctQaError, ValueError):
    """A checkpoint or model card disagrees with the model contract (categories, input)."""


class TrainingError(CbctQaError, RuntimeError):
    """Training cannot proceed (cohort missing, too small, inconsistent labels)."""


class AttributionError(CbctQaError, RuntimeError):
    """Grad-CAM attribution failed (target layer missing, bad method, shape mismatch)."""


class StatisticsError(CbctQaError, ValueError):
    """Statistical inputs are invalid (too few volumes, mismatched lengths, bad table)."""


class DicomWriteError(CbctQaError, ValueError):
    """A volume cannot be written as a DICOM series (bad shape, spacing, HU range, syntax)."""


class ModelNotFoundError(ModelContractError, FileNotFoundError):
    """A model checkpoint file does not exist."""


class UnknownSchemaError(CbctQaError, LookupError):
    """An XNAT schema name is not one the plugin ships (see ``xnat_plugin.schema.SCHEMA_NAMES``)."""


class SeriesNotFoundError(DicomError, LookupError):
    """The series asked for (by SeriesInstanceUID) is not in the input."""


class RtStructError(DicomError):
    """A DICOM RTSTRUCT (structure set) cannot be turned into organ masks."""


class RtStructReferenceError(RtStructError):
    """The RTSTRUCT references another frame of reference, series or image instances."""


class RtStructNoMatchingRoiError(RtStructError, LookupError):
    """No ROI name of the RTSTRUCT maps to a category (TG-263 names and aliases)."""


class RtStructOpenContourError(RtStructError):
    """A matched ROI holds a contour that is not CLOSED_PLANAR (open or point contours)."""


class RtStructEmptyError(RtStructError):
    """A matched ROI has no contour data, or its contours cover no voxel."""


class RtStructGeometryError(RtStructError):
    """Contours lie off the volume's slices or outside it, or are not axial."""
