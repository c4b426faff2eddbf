"""The in-memory CBCT volume every layer exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Volume"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT/CBCT series as a 3-D array in Hounsfield units.

    Attributes
    ----------
    hu:
        float32 array shaped ``(slices, rows, cols)`` in HU, slice 0 the most inferior
        (smallest position along the slice normal). Read-only.
    spacing:
        Voxel spacing in mm as ``(z, y, x)``; z is the distance between slice centres.
    origin:
        Patient-coordinate position (mm) of the centre of voxel ``(0, 0, 0)``.
    orientation:
        Direction cosines: row direction then column direction (6 floats, DICOM order).
    study_uid, series_uid:
        StudyInstanceUID and SeriesInstanceUID of the source series.
    provenance:
        Where the data came from: source path(s), number of files, sha256 of the sorted
        SOPInstanceUIDs, transfer syntaxes, warnings raised while loading.
    """

    hu: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    study_uid: str = ""
    series_uid: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (slices, rows, cols); got shape {self.hu.shape}")
        if self.hu.dtype != np.float32:
            object.__setattr__(self, "hu", self.hu.astype(np.float32))
        if self.hu.flags.writeable:
            arr = self.hu.view()
            arr.flags.writeable = False
            object.__setattr__(self, "hu", arr)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"Volume.spacing must be three positive mm values (z, y, x); got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, cols)``."""
        s = self.hu.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def n_slices(self) -> int:
        """Number of axial slices."""
        return int(self.hu.shape[0])
