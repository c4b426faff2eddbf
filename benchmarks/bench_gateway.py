"""Benchmark: reading a project's assessments and ratings in bulk vs one request per assessor.

Starts the local XNAT-compatible server in-process (``xnat_plugin.server.run_in_thread``,
SQLite in a temporary folder), populates one project with ``--sessions`` CT sessions, each
with one ``cbctqa:qaAssessmentData`` (all fields set) and ``--raters`` ``cbctqa:ratingData``,
then times, in the same process against the same server:

(a) ours: ``XnatGateway.read_assessments`` + ``read_ratings`` (one listing request each,
    ``/data/experiments?xsiType=…&project=…&columns=…``);
(b) the per-assessor way with xnatpy objects: one listing for the assessor URIs, then one
    xnatpy object per assessor (``session.create_object(uri, type_=…)``) whose fields are
    read as attributes (``obj.parotid_score`` …): one ``GET …?format=json`` per assessor.

Times exclude logging in (and, for (b), xnatpy's schema parsing). Both yield the same
records (checked). Prints both times, both request counts (counted by a
``requests`` response hook on each xnatpy session) and the ratio (b)/(a).

Population uses plain PUTs by label with query-string fields (the REST writes the gateway
itself sends), from ``--workers`` threads each with its own xnatpy session; it is not timed
as part of the comparison.

Run::

    python benchmarks/bench_gateway.py [--sessions 2000] [--raters 2] [--workers 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qa_core.categories import CATEGORIES
from xnat_plugin.gateway import (
    ASSESSMENT_XSI_TYPE,
    RATING_XSI_TYPE,
    AssessmentRecord,
    CategoryAssessment,
    XnatGateway,
    assessment_label,
    rating_label,
)
from xnat_plugin.server import ServerConfig, run_in_thread

PROJECT = "BENCH"
MODEL = "1.0.0"
USER, PASSWORD = "admin", "bench-admin-pw"


class Counter:
    """Counts HTTP answers received by one xnatpy session (a ``requests`` response hook)."""

    def __init__(self, xnat_session: Any) -> None:
        self.n = 0
        self._lock = threading.Lock()
        xnat_session.interface.hooks["response"].append(self._hook)

    def _hook(self, resp: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.n += 1


def _record(i: int) -> AssessmentRecord:
    cats = {
        c: CategoryAssessment(score=1.0 + ((i * 7 + k) % 40) / 10.0, ae=1000.0 + 13.5 * ((i + k) % 97),
                              ae_per_voxel=0.01 * ((i * 3 + k) % 89), outlier=(i + k) % 23 == 0,
                              outlier_reason="robust z 3.8" if (i + k) % 23 == 0 else "")
        for k, c in enumerate(CATEGORIES)
    }  # fmt: skip
    return AssessmentRecord(
        status="complete", scan_id="1", model_version=MODEL, series_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}",
        slices=160, spacing=(2.0, 0.5, 0.5), model_name="cbctqa-cnn", model_sha256="0123456789abcdef" * 4,
        cam_method="gradcam", target_layer="layer4", package_version="0.1.0", duration_s=3.25, categories=cats,
    )  # fmt: skip


def _rating(i: int, r: int) -> dict[str, int]:
    return {c: 1 + (i + r + k) % 5 for k, c in enumerate(CATEGORIES)}


def populate(url: str, n_sessions: int, n_raters: int, workers: int) -> float:
    """Create the project by PUTs from ``workers`` threads; return the seconds taken."""
    start = time.perf_counter()
    with XnatGateway.connect(url, USER, PASSWORD) as gw:
        gw.xnat.put(f"/data/projects/{PROJECT}")
    chunks = [list(range(w, n_sessions, workers)) for w in range(workers)]

    def work(indices: list[int]) -> None:
        with XnatGateway.connect(url, USER, PASSWORD) as gw:
            x = gw.xnat
            for i in indices:
                subject, label = f"SUBJ{i:05d}", f"CBCT{i:05d}"
                x.put(f"/data/projects/{PROJECT}/subjects/{subject}")
                resp = x.put(f"/data/projects/{PROJECT}/subjects/{subject}/experiments/{label}",
                             query={"xsiType": "xnat:ctSessionData"})  # fmt: skip
                session_id = resp.text.strip()
                base = f"/data/experiments/{session_id}/assessors"
                alabel = assessment_label(label, "1", MODEL)
                query = {"xsiType": ASSESSMENT_XSI_TYPE, "req_format": "qs"}
                query.update({f"{ASSESSMENT_XSI_TYPE}/{k}": v for k, v in _record(i).to_xnat_fields().items()
                              if v != "NULL"})  # fmt: skip
                x.put(f"{base}/{alabel}", query=query)
                for r in range(n_raters):
                    rater = f"dr_{r}"
                    rq = {"xsiType": RATING_XSI_TYPE, "req_format": "qs", f"{RATING_XSI_TYPE}/rater": rater,
                          f"{RATING_XSI_TYPE}/date": "2026-11-27"}  # fmt: skip
                    rq.update({f"{RATING_XSI_TYPE}/{c}": str(v) for c, v in _rating(i, r).items()})
                    x.put(f"{base}/{rating_label(label, rater)}", query=rq)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, chunks))
    return time.perf_counter() - start


def read_bulk(url: str) -> tuple[float, dict[str, Any], int]:
    """(a) the gateway's bulk reads: seconds (login excluded), records by assessor ID, requests."""
    with XnatGateway.connect(url, USER, PASSWORD) as gw:
        counter = Counter(gw.xnat)
        t0 = time.perf_counter()
        assessments = gw.read_assessments(PROJECT)
        ratings = gw.read_ratings(PROJECT)
        out: dict[str, Any] = {a.assessor_id: a.record for a in assessments}
        out.update({r.assessor_id: (r.rater, dict(r.scores)) for r in ratings})
        return time.perf_counter() - t0, out, counter.n


def read_per_assessor(url: str) -> tuple[float, dict[str, Any], int]:
    """(b) one xnatpy object (one GET) per assessor, fields read as attributes; login and
    xnatpy's model building excluded from the time."""
    with XnatGateway.connect(url, USER, PASSWORD, parse_model=True) as gw:
        x = gw.xnat
        counter = Counter(x)
        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        for xsi_type in (ASSESSMENT_XSI_TYPE, RATING_XSI_TYPE):
            rows = x.get_json("/data/experiments", query={"xsiType": xsi_type, "project": PROJECT,
                                                          "columns": "ID,URI"})["ResultSet"]["Result"]  # fmt: skip
            for row in rows:
                obj = x.create_object(row["URI"], type_=xsi_type, id_=row["ID"])
                if xsi_type == ASSESSMENT_XSI_TYPE:
                    fields = {}
                    for name in AssessmentRecord.field_names():
                        value = getattr(obj, name)
                        fields[name] = "" if value is None else (str(value).lower() if isinstance(value, bool)
                                                                 else str(value))  # fmt: skip
                    out[row["ID"]] = AssessmentRecord.from_xnat_fields(fields, what=row["ID"])
                else:
                    scores = {
                        c: int(getattr(obj, c)) for c in CATEGORIES if getattr(obj, c) is not None
                    }
                    out[row["ID"]] = (obj.rater, scores)
        return time.perf_counter() - t0, out, counter.n


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, left in a.items():
        right = b[key]
        if isinstance(left, AssessmentRecord):
            lf, rf = left.to_xnat_fields(), right.to_xnat_fields()
            for name, lv in lf.items():
                rv = rf[name]
                if lv == rv:
                    continue
                try:
                    if math.isclose(float(lv), float(rv), rel_tol=1e-6):
                        continue
                except ValueError:
                    pass
                return False
        elif left != right:
            return False
    return True


def _time(
    fn: Callable[[], tuple[float, dict[str, Any], int]], repeats: int
) -> tuple[float, int, dict[str, Any]]:
    times, count, result = [], 0, {}
    for _ in range(repeats):
        elapsed, result, count = fn()
        times.append(elapsed)
    return statistics.median(times), count, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--raters", type=int, default=2, help="ratings per session")
    parser.add_argument("--workers", type=int, default=4, help="threads populating the server")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of the bulk read (median)"
    )
    parser.add_argument(
        "--repeats-per-assessor", type=int, default=1, help="timed repeats of (b) (median)"
    )
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.machine()}, {args.sessions} sessions, "
          f"{args.raters} ratings each")  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
        run_in_thread(
            ServerConfig(data_dir=Path(tmp), admin_user=USER, admin_password=PASSWORD)
        ) as server,
    ):
        secs = populate(server.url, args.sessions, args.raters, args.workers)
        n_assessors = args.sessions * (1 + args.raters)
        print(f"populated {args.sessions} sessions + {n_assessors} assessors by PUT in {secs:.1f} s "
              f"({args.workers} threads)")  # fmt: skip
        t_bulk, n_bulk, bulk = _time(lambda: read_bulk(server.url), args.repeats)
        t_each, n_each, each = _time(
            lambda: read_per_assessor(server.url), args.repeats_per_assessor
        )
    if len(bulk) != n_assessors or not _same(bulk, each):
        print("MISMATCH: the two methods read different records", file=sys.stderr)
        return 1
    print(
        f"(a) gateway bulk reads      : {t_bulk:8.3f} s  {n_bulk:6d} requests  (median of {args.repeats})"
    )
    print(f"(b) one request per assessor: {t_each:8.3f} s  {n_each:6d} requests")
    print(f"ratio (b)/(a): time {t_each / t_bulk:.1f}x, requests {n_each / n_bulk:.0f}x; "
          f"records identical ({len(bulk)} assessors)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
