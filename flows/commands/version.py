"""``cbctqa version``: package and key library versions."""

from __future__ import annotations

import argparse
import json
from importlib import metadata

__all__ = ["register", "run"]

_LIBS = ("cbctqa", "torch", "torchvision", "grad-cam", "pydicom", "numpy", "scipy", "xnat", "prefect", "streamlit")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the package version and key library versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    versions: dict[str, str | None] = {}
    for lib in _LIBS:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    if args.json:
        print(json.dumps(versions, sort_keys=True))
    else:
        print(f"cbctqa {versions['cbctqa']}")
        for lib, v in versions.items():
            if lib != "cbctqa":
                print(f"  {lib:12s} {v or 'not installed'}")
    return 0
