"""``cbctqa inspect PATH``: load a DICOM series exactly as scoring will and describe it.

Prints the image series found in PATH, the geometry of the loaded series (shape, spacing,
origin, orientation), its HU range and any warnings raised while loading. Bad input (not
DICOM, several series, missing slices, ...) exits with code 2 and the error's one line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run", "summary"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="load a DICOM series (folder, zip or files) and print its series, geometry, HU range and warnings",
        description=__doc__,
    )
    p.add_argument("path", nargs="+", help="folder, .zip archive or DICOM file(s) of one series")
    p.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="SeriesInstanceUID to load when PATH holds several",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary (sorted keys)")
    p.set_defaults(handler=run)


def summary(paths: list[str], series_uid: str | None = None) -> dict[str, Any]:
    """Load ``paths`` with :func:`qa_core.dicom_series.load_series` and summarise it.

    Returns a JSON-ready dict: ``series`` (every image series found: uid, modality,
    description, n_files), ``selected`` (the loaded series' UID), ``study_uid``, ``shape``
    (slices, rows, cols), ``spacing_mm`` (z, y, x), ``origin_mm``, ``orientation``,
    ``hu`` (min, median, max in HU), ``warnings`` and ``provenance`` (without the file list).
    """
    import numpy as np

    from qa_core.dicom_series import load_series, summarize_series

    source: str | list[str] = paths[0] if len(paths) == 1 else list(paths)
    volume = load_series(source, series_uid=series_uid)
    found = summarize_series(source)
    hu = volume.hu
    provenance = {k: v for k, v in volume.provenance.items() if k != "files"}
    return {
        "sources": provenance.get("sources"),
        "series": [
            {
                "uid": s.series_uid,
                "modality": s.modality,
                "description": s.description,
                "n_files": s.n_files,
            }
            for s in found
        ],
        "selected": volume.series_uid,
        "study_uid": volume.study_uid,
        "shape": list(volume.shape),
        "spacing_mm": [round(v, 6) for v in volume.spacing],
        "origin_mm": [round(v, 6) for v in volume.origin],
        "orientation": list(volume.orientation),
        "hu": {"min": float(hu.min()), "median": float(np.median(hu)), "max": float(hu.max())},
        "warnings": list(volume.provenance.get("warnings", [])),
        "provenance": provenance,
    }


def run(args: argparse.Namespace) -> int:
    info = summary(list(args.path), args.series)
    if args.json:
        print(json.dumps(info, sort_keys=True, default=str))
        return 0
    print(f"source: {', '.join(info['sources'])}")
    print("series found:")
    for s in info["series"]:
        mark = "*" if s["uid"] == info["selected"] else " "
        print(
            f" {mark} {s['uid']}  {s['modality']:4s} {s['n_files']:5d} file(s)  {s['description'] or '-'}"
        )
    p = info["provenance"]
    print(
        f"loaded: {info['selected']} ({p['series_description'] or 'no description'}, {p['manufacturer'] or 'unknown manufacturer'})"
    )
    print(f"  shape (slices, rows, cols): {tuple(info['shape'])}")
    print(f"  spacing (z, y, x) mm:       {tuple(info['spacing_mm'])}")
    print(f"  origin (x, y, z) mm:        {tuple(info['origin_mm'])}")
    print(f"  orientation:                {tuple(info['orientation'])}")
    hu = info["hu"]
    print(f"  HU min / median / max:      {hu['min']:.1f} / {hu['median']:.1f} / {hu['max']:.1f}")
    print(f"  transfer syntaxes:          {', '.join(p['transfer_syntaxes'])}")
    if info["warnings"]:
        print("warnings:")
        for w in info["warnings"]:
            print(f"  - {w}")
    else:
        print("warnings: none")
    return 0
