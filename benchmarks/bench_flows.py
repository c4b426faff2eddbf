"""Benchmark: sessions per minute through Prefect, and where a session's time goes.

Side by side in one process, against the local XNAT-compatible server and a real local Prefect
server (SQLite), on simulated 64-slice CT sessions at 256² and 512²:

* reference: ``flows.scoring.score_session`` called directly (no Prefect), one session after
  another: its per-stage split (download, load, ``attribute_volume``, products, upload);
* ``cbctqa score-pending`` (discovery, idempotent runs, the in-process worker, task runs,
  concurrency limit, events) with 1 and with 2 workers on fresh copies of the cohort:
  end-to-end sessions per minute (import → complete assessment) and the scoring pass alone;
* what Prefect adds per session, from the 1-worker pass: inside each run (claim to end minus
  the stages it timed: engine start/finish, waiting for the scoring slot, task runs and the
  event), between runs (the worker's poll and claim), and the whole pass (pass wall time minus
  the stages of its runs, over the sessions: also registration, discovery, waiting), beside
  the plain difference (Prefect pass − reference), which also carries the run-to-run noise
  of the stages themselves (mostly the upload).

Usage::

    .venv/bin/python benchmarks/bench_flows.py [--sessions 4] [--sizes 256 512] [--slices 64]
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import socket
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phantom(seed: int, slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    c, r = size / 2, size * 0.42
    body = ((y - c) ** 2 + (x - c) ** 2) < r**2
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20 + 10 * seed, size=body.shape)
    jaw = ((y - c * 1.3) ** 2 + (x - c) ** 2 < (size * 0.2) ** 2) & ~((y - c * 1.3) ** 2 + (x - c) ** 2 < (size * 0.16) ** 2)
    hu[jaw] = 900.0
    return hu.astype(np.float32)


def _import(gw, project: str, n: int, slices: int, size: int, tmp: Path) -> None:
    from qa_core.dicom_writer import write_series

    for i in range(n):
        label = f"B{size}_{i}"
        files = write_series(_phantom(i, slices, size), (2.0, 0.5 * 512 / size, 0.5 * 512 / size),
                             tmp / f"{project}-{label}", uid_seed=f"{project}-{label}",
                             patient_id=f"P{label}")  # fmt: skip
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in files:
                zf.write(f, f.name)
        gw.xnat.post("/data/services/import", data=buf.getvalue(),
                     query={"import-handler": "DICOM-zip", "PROJECT_ID": project,
                            "SUBJECT_ID": f"S{label}", "EXPT_LABEL": label},
                     headers={"Content-Type": "application/zip"})  # fmt: skip


def _prefect_adds(summary, timings: dict, stages: tuple[str, ...], pass_s: float) -> dict[str, float]:
    """What Prefect added per session in one 1-worker pass (medians over its runs, seconds)."""
    runs = [r for r in summary.run_seconds if r in timings]
    work = {r: sum(timings[r].get(k, 0.0) for k in stages) for r in runs}
    med = statistics.median
    spans = sorted(summary.run_spans[r] for r in runs if r in summary.run_spans)
    gaps = [nxt[1] - prev[2] for prev, nxt in itertools.pairwise(spans)]
    return {
        "in_run": med(summary.run_seconds[r] - work[r] for r in runs),
        "engine": med(summary.run_seconds[r] - timings[r]["flow"] for r in runs),
        "slot": med(timings[r].get("wait", 0.0) for r in runs),
        "tasks": med(timings[r]["flow"] - timings[r].get("wait", 0.0) - work[r] for r in runs),
        "gap": med(gaps) if gaps else float("nan"),
        "pass": (pass_s - sum(work.values())) / max(len(runs), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = ap.parse_args(argv)

    from xnat_plugin.gateway import XnatGateway
    from xnat_plugin.server import ServerConfig, run_in_thread

    work = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    os.environ["CBCTQA_DATA_DIR"] = str(work / "scratch")
    os.environ.setdefault("CBCTQA_DEVICE", "cpu")
    os.environ["CBCTQA_SCORING_CONCURRENCY"] = "2"
    os.environ["PREFECT_LOGGING_LEVEL"] = "ERROR"
    cfg = ServerConfig(data_dir=work / "xnat", admin_user="admin", admin_password="bench-pw-1",
                       host="127.0.0.1", port=0)  # fmt: skip
    from flows.prefect_server import prefect_api

    t0 = time.perf_counter()
    with run_in_thread(cfg) as server, prefect_api(port=_free_port(), home=work / "prefect") as api:
        print(f"# local XNAT {server.url}, Prefect {api} (started in {time.perf_counter() - t0:.0f} s)")
        os.environ.update({"XNAT_HOST": server.url, "XNAT_USER": server.user,
                           "XNAT_PASS": server.password})  # fmt: skip
        from flows import session_flows
        from flows.pending import score_pending
        from flows.scoring import score_session

        model = session_flows.worker_model()  # loaded once, as a worker does
        with XnatGateway.connect(server.url, server.user, server.password) as gw:
            print(f"{'size':>5} {'mode':<18} {'sessions/min':>12} {'s/session':>10} "
                  f"{'select':>7} {'download':>9} {'load':>6} {'attribute':>9} {'localise':>9} "
                  f"{'products':>9} {'upload':>7} {'other':>6}")  # fmt: skip
            for size in args.sizes:
                # reference: plain calls, no Prefect
                proj = f"REF{size}"
                gw.xnat.put(f"/data/projects/{proj}", accepted_status=[200, 201])
                t_imp = time.perf_counter()
                _import(gw, proj, args.sessions, args.slices, size, work / "dicom")
                import_s = (time.perf_counter() - t_imp) / args.sessions
                outs = []
                t_ref = time.perf_counter()
                for ref in gw.list_sessions(proj):
                    outs.append(score_session(gw, ref, model, workdir=work / "ref"))
                ref_s = (time.perf_counter() - t_ref) / args.sessions
                assert all(o.status == "complete" for o in outs), [o.error for o in outs]
                stages = ("select", "download", "load", "attribute", "localise", "products", "upload")
                split = {k: statistics.median(o.timings.get(k, 0.0) for o in outs) for k in stages}
                split["other"] = statistics.median(o.duration_s - sum(o.timings.get(k, 0.0) for k in stages)
                                                   for o in outs)  # fmt: skip
                print(f"{size:>5} {'reference (plain)':<18} {60 / ref_s:>12.1f} {ref_s:>10.2f} "
                      + " ".join(f"{split[k]:>{w}.2f}" for k, w in
                                 (("select", 7), ("download", 9), ("load", 6), ("attribute", 9),
                                  ("localise", 9), ("products", 9), ("upload", 7), ("other", 6))))  # fmt: skip
                per_worker: dict[int, float] = {}
                for workers in (1, 2):
                    proj = f"PF{size}W{workers}"
                    gw.xnat.put(f"/data/projects/{proj}", accepted_status=[200, 201])
                    t_e2e = time.perf_counter()
                    _import(gw, proj, args.sessions, args.slices, size, work / "dicom")
                    t_pass = time.perf_counter()
                    summary = score_pending([proj], workers=workers)[proj]
                    t_end = time.perf_counter()
                    assert len(summary.scored) == args.sessions, summary.line()
                    pass_s = (t_end - t_pass) / args.sessions
                    e2e_s = (t_end - t_e2e) / args.sessions
                    per_worker[workers] = pass_s
                    print(f"{size:>5} {f'prefect {workers} worker(s)':<18} {60 / pass_s:>12.1f} "
                          f"{pass_s:>10.2f}   (end to end incl. import: {60 / e2e_s:.1f}/min)")  # fmt: skip
                    if workers == 1:
                        adds = _prefect_adds(summary, session_flows.RUN_TIMINGS, stages, t_end - t_pass)
                        mine = [session_flows.RUN_TIMINGS[r] for r in summary.run_seconds
                                if r in session_flows.RUN_TIMINGS]  # fmt: skip
                        print(f"{size:>5} {'  its runs':<18} {'':>12} {'':>10} " + " ".join(
                            f"{statistics.median(t.get(k, 0.0) for t in mine):>{w}.2f}" for k, w in
                            (("select", 7), ("download", 9), ("load", 6), ("attribute", 9),
                             ("localise", 9), ("products", 9), ("upload", 7))))  # fmt: skip
                over = per_worker[1] - ref_s
                print(f"{size:>5} Prefect adds per session (1 worker, medians): inside each run "
                      f"{adds['in_run']:.3f} s (engine start/finish {adds['engine']:.3f}, slot wait "
                      f"{adds['slot']:.3f}, tasks + event {adds['tasks']:.3f}); between runs "
                      f"{adds['gap']:.3f} s; whole pass (wall - stages) {adds['pass']:.3f} s")  # fmt: skip
                print(f"{size:>5} plain difference (Prefect 1 worker - reference): {over:+.2f} s/session "
                      f"({per_worker[1] / ref_s:.2f}x); 2 vs 1 worker: {per_worker[1] / per_worker[2]:.2f}x; "
                      f"import {import_s:.2f} s/session; products/attribute "
                      f"{split['products'] / max(split['attribute'], 1e-9):.2f}x")  # fmt: skip
        print(f"# model loads in this process: {session_flows.MODEL_LOADS}")
        session_flows.close_worker_gateways()
    return 0


if __name__ == "__main__":
    sys.exit(main())
