"""``cbctqa version``: the product version and key library versions.

The product version has one source, :data:`qa_core.__version__`: ``pyproject.toml`` reads it
(``[tool.setuptools.dynamic]``), the assessments record it (``package_version``), the
dashboard shows it and this command prints it. It is read from the code, not from the
installed package metadata, which an editable install leaves stale until reinstalled.
"""

from __future__ import annotations

import argparse
import json
from importlib import metadata

__all__ = ["product_version", "register", "run"]

_LIBS = ("torch", "torchvision", "grad-cam", "pydicom", "numpy", "scipy", "xnat", "prefect", "streamlit")


def product_version() -> str:
    """The CBCT QA monitor's version (:data:`qa_core.__version__`)."""
    from qa_core import __version__

    return __version__


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the package version and key library versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    versions: dict[str, str | None] = {"cbctqa": product_version()}
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
