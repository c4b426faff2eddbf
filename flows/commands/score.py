"""``cbctqa score PATH``: Likert scores, Grad-CAM and Attribution Energy for one CBCT series.

Loads the series exactly as ``cbctqa inspect`` does, predicts the five Likert scores with
the quality model (the shipped default unless ``--model``), attributes every slice for all
five categories in one batched pass, prints a per-category table (score, AE, AE per voxel)
and optionally writes a JSON report (sorted keys, with provenance) and PNG overlays of the
top-AE slices per category.

AE is the sum of the raw (ReLU'd, un-normalised) Grad-CAM map over all slices at the target
layer's resolution; AE per voxel divides it by the number of map cells summed. Neither is a
quality score: read them beside the prediction.

Bad input (not DICOM, several series without ``--series``, bad model, unknown method, ...)
exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["files_sha256", "register", "report", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "score",
        help="score a CBCT series: five Likert scores, Grad-CAM, Attribution Energy (AE)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="+", help="folder, .zip archive or DICOM file(s) of one series")
    p.add_argument(
        "--series", default=None, metavar="UID", help="SeriesInstanceUID when PATH holds several"
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the report as JSON here"
    )
    p.add_argument(
        "--overlays", type=Path, default=None, metavar="DIR", help="write top-AE slice PNGs here"
    )
    p.add_argument(
        "--rtstruct",
        type=Path,
        default=None,
        metavar="RS.dcm",
        help="RTSTRUCT of this series (TG-263 organs): adds per category ae_in_region (share of "
        "the map's energy inside the organ), region_share (chance level) and pointing_hit_rate",
    )
    p.add_argument(
        "--top-k", type=int, default=3, metavar="K", help="overlay slices per category (default 3)"
    )
    p.add_argument(
        "--method",
        default=None,
        help="CAM method: gradcam, gradcam++, xgradcam, hirescam, layercam (default CBCTQA_CAM_METHOD or gradcam)",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="CKPT",
        help="checkpoint .pt with its .card.json (default CBCTQA_MODEL_PATH or the shipped model)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="slices per batch (default CBCTQA_BATCH_SIZE, else 32 on CPU, 128 on CUDA)",
    )
    p.add_argument(
        "--device", default=None, help="auto, cpu or cuda[:N] (default CBCTQA_DEVICE or auto)"
    )
    p.set_defaults(handler=run)


def files_sha256(provenance: dict[str, Any]) -> tuple[str | None, str]:
    """sha256 of the series' bytes and what it covers.

    Hashes the content of every file of the series in sorted path order when they are files
    on disk (``scope = "files"``); for series read from zip archives, the archives' bytes
    (``scope = "archives"``). Returns ``(None, "unavailable")`` when neither can be read.
    """
    files = [Path(str(f)) for f in provenance.get("files", [])]
    scope = "files"
    if not files or not all(f.is_file() for f in files):
        files = [Path(str(s)) for s in provenance.get("sources", []) if Path(str(s)).is_file()]
        scope = "archives"
    if not files:
        return None, "unavailable"
    h = hashlib.sha256()
    for f in sorted(files):
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest(), scope


def report(
    paths: list[str],
    *,
    series_uid: str | None = None,
    method: str | None = None,
    model_path: Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    overlays: Path | None = None,
    top_k: int = 3,
    progress: bool = False,
    rtstruct: Path | None = None,
) -> dict[str, Any]:
    """Load, predict, attribute and (optionally) draw overlays; return the JSON-ready report.

    Keys: ``categories`` (name → ``score``, ``ae``, ``ae_per_voxel``), ``slice_scores`` and
    ``slice_ae`` (name → list over slices, slice 0 most inferior), ``method``,
    ``target_layer``, ``map_shape``, ``input_shape``, ``upsample_factor``, ``overlays`` (paths
    written) and ``provenance`` (``input``, ``model``, ``attribution``, ``settings``,
    ``package_version``). With ``rtstruct``, every category row also carries ``ae_in_region``,
    ``region_share`` and ``pointing_hit_rate`` (``None`` without a matching ROI), and
    ``localisation`` holds the full report (:mod:`qa_core.localisation`), its outlier ``flags``
    and the ROI names and voxel counts read from the RTSTRUCT.
    """
    from qa_core import __version__
    from qa_core.attribution import attribute_volume
    from qa_core.dicom_series import load_series
    from qa_core.errors import ConfigurationError
    from qa_core.model import load_model, select_device
    from qa_core.settings import get_settings

    settings = get_settings()
    method = method or settings.cam_method
    dev = select_device(device)
    bs = settings.batch_size if batch_size is None else batch_size
    if bs is None:
        from qa_core.attribution import default_batch_size

        bs = default_batch_size(dev)
    if bs < 1:
        raise ConfigurationError(f"--batch-size must be >= 1; got {bs}")
    source: str | list[str] = paths[0] if len(paths) == 1 else list(paths)
    volume = load_series(source, series_uid=series_uid)
    model = load_model(model_path, device=dev)
    result = attribute_volume(
        model, volume, method=method, batch_size=bs, device=dev, progress=progress
    )
    localisation: Any = None
    reference_body = None
    if rtstruct is not None:
        from qa_core.localisation import localisation_flags, localise_rtstruct

        localisation, organ_masks = localise_rtstruct(result, volume, rtstruct)
        loc_flags = localisation_flags(localisation)
        reference_body = organ_masks.body
    from qa_core.errors import CbctQaError
    from qa_core.image_checks import check_image

    try:
        checks_doc = check_image(volume, reference_body=reference_body).to_dict()
    except CbctQaError as exc:  # too small to check: say so, the scores still stand
        checks_doc = {"flagged": [], "checks": {}, "note": f"image checks not run: {exc}"}
    written: list[str] = []
    if overlays is not None:
        from qa_core.overlays import write_overlays

        contours = None
        if localisation is not None:  # each category's contoured organ (overall: the body)
            contours = {
                **organ_masks.masks,
                **({"overall": organ_masks.body} if organ_masks.body is not None else {}),
            }
        written = [
            str(p)
            for p in write_overlays(volume, result, overlays, top_k=top_k, contours=contours)
        ]

    doc = result.to_dict()
    attribution_prov = doc.pop("provenance")
    vprov = volume.provenance
    digest, scope = files_sha256(vprov)
    card = getattr(model, "card", {}) or {}
    doc["overlays"] = written
    doc["image_checks"] = checks_doc
    if localisation is not None:
        for name, row in doc["categories"].items():
            loc = localisation.categories.get(name)
            row["ae_in_region"] = None if loc is None else _finite(loc.ae_in_region)
            row["region_share"] = None if loc is None else _finite(loc.region_share)
            row["pointing_hit_rate"] = None if loc is None else _finite(loc.pointing_hit_rate)
        doc["localisation"] = {
            **localisation.to_dict(),
            "flags": [{"category": f.category, "reason": f.reason} for f in loc_flags],
            "masks": organ_masks.to_dict(),
        }
    doc["provenance"] = {
        "package_version": __version__,
        "input": {
            "series_uid": volume.series_uid,
            "study_uid": volume.study_uid,
            "sources": [str(s) for s in vprov.get("sources", [])],
            "n_files": vprov.get("n_files"),
            "files_sha256": digest,
            "files_sha256_scope": scope,
            "sop_instance_uids_sha256": vprov.get("sop_instance_uids_sha256"),
            "transfer_syntaxes": vprov.get("transfer_syntaxes"),
            "shape": list(volume.shape),
            "spacing_mm": list(volume.spacing),
            "warnings": list(vprov.get("warnings", [])),
        },
        "model": {
            "path": str(model_path)
            if model_path is not None
            else (str(settings.model_path) if settings.model_path else "default"),
            "name": attribution_prov.get("model_name"),
            "version": attribution_prov.get("model_version"),
            "sha256": card.get("sha256"),
            "status": card.get("status"),
        },
        "attribution": attribution_prov,
        "settings": {
            "method": method,
            "batch_size": bs,
            "device": str(dev),
            "series": series_uid,
            "top_k": top_k if overlays is not None else None,
        },
    }
    if rtstruct is not None:
        doc["provenance"]["settings"]["rtstruct"] = str(rtstruct)
    return doc


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> None (JSON null)


def run(args: argparse.Namespace) -> int:
    from qa_core.errors import ConfigurationError

    if args.top_k < 1:
        raise ConfigurationError(f"--top-k must be >= 1; got {args.top_k}")
    doc = report(
        list(args.path),
        series_uid=args.series,
        method=args.method,
        model_path=args.model,
        batch_size=args.batch_size,
        device=args.device,
        overlays=args.overlays,
        top_k=args.top_k,
        progress=sys.stderr.isatty(),
        rtstruct=args.rtstruct,
    )
    prov = doc["provenance"]
    inp, mod = prov["input"], prov["model"]
    n, rows, cols = inp["shape"]
    print(f"series {inp['series_uid'] or '(no UID)'}: {n} slices of {rows} x {cols}")
    print(
        f"model {mod['name']} (sha256 {str(mod['sha256'])[:12]}), method {doc['method']}, "
        f"device {prov['settings']['device']}"
    )
    print()
    loc = doc.get("localisation")
    extra = f" {'in organ':>9s} {'chance':>7s} {'pointing':>9s}" if loc else ""
    print(f"{'category':14s} {'score':>6s} {'AE':>12s} {'AE/voxel':>12s}{extra}")
    for name, row in doc["categories"].items():
        line = f"{name:14s} {row['score']:6.2f} {row['ae']:12.5g} {row['ae_per_voxel']:12.5g}"
        if loc:
            line += "".join(
                f" {'-':>{w}s}" if row.get(key) is None else f" {row[key]:{w}.1%}"
                for key, w in (("ae_in_region", 9), ("region_share", 7), ("pointing_hit_rate", 9))
            )
        print(line)
    h, w = doc["map_shape"]
    hh, ww = doc["input_shape"]
    print()
    print(
        f"score: Likert 1-5 (5 best), mean over slices. AE: sum of raw {doc['method']} map cells "
        f"over all slices at the target layer's {h}x{w} (x{doc['upsample_factor']:g} if upsampled "
        f"to {hh}x{ww}); AE/voxel = AE / ({n}*{h}*{w})."
    )
    if loc:
        print(
            "in organ: share of the raw map's energy inside the contoured organ (ae_in_region; "
            "overall: the body); chance: the organ's share of the body; pointing: slices whose "
            f"map maximum lies in the organ. RTSTRUCT {args.rtstruct} (body from {loc['body_source']})."
        )
        for flag in loc["flags"]:
            print(f"outlier: {flag['category']}: {flag['reason']}")
    for name in doc["image_checks"]["flagged"]:
        print(f"image check: {doc['image_checks']['checks'][name]['reason']}")
    for warning in inp["warnings"]:
        print(f"warning: {warning}")
    if doc["overlays"]:
        print(f"overlays: {len(doc['overlays'])} PNG(s) in {args.overlays}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.json}")
    return 0
