"""Benchmark: load a 200-slice 512x512 CT series with ``load_series`` vs a naive reference.

Target (issue #2): under 2 s for ``load_series`` on the 2-core development machine.

The naive reference is what a script would typically do: ``pydicom.dcmread`` every file,
sort by InstanceNumber, ``pixel_array`` + ``apply_modality_lut`` per slice, ``np.stack``.
Both run in this process on the same files (page cache warm for both: one untimed
warm-up read precedes the timings). Run: ``python benchmarks/bench_load_series.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.pixels.processing import apply_modality_lut

from qa_core.dicom_series import load_series
from qa_core.dicom_writer import write_series


def naive_load(folder: Path) -> npt.NDArray[np.float64]:
    """Reference loader: dcmread everything, sort by InstanceNumber, rescale, stack."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])


def best_of(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(20260101)
    hu = (
        rng.normal(0.0, 300.0, (args.slices, args.size, args.size))
        .clip(-1000, 3000)
        .astype(np.float32)
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_series(hu, (1.0, 0.5, 0.5), folder)
        t_write = time.perf_counter() - t0
        ours = load_series(folder)  # warm-up (page cache, imports)
        ref = naive_load(folder)
        assert ours.shape == ref.shape
        err = float(np.abs(ours.hu - ref).max())
        t_ours = best_of(lambda: load_series(folder), args.repeats)
        t_ref = best_of(lambda: naive_load(folder), args.repeats)
    mb = hu.nbytes / 2 / 2**20
    print(
        f"series: {args.slices} slices x {args.size}x{args.size} ({mb:.0f} MiB stored), written in {t_write:.2f} s"
    )
    print(f"load_series          : {t_ours:.3f} s  (best of {args.repeats}; target < 2 s)")
    print(f"naive pydicom loader : {t_ref:.3f} s  (best of {args.repeats})")
    print(f"speed-up             : {t_ref / t_ours:.2f}x   max |HU difference| = {err:g}")


if __name__ == "__main__":
    main()
