"""Pure core of the CBCT QA monitor.

DICOM volume -> preprocessing -> CNN -> batched Grad-CAM -> Attribution Energy -> statistics.
No XNAT, Prefect or Streamlit imports here. Public names are resolved lazily so that
``import qa_core`` stays cheap (torch is loaded only when a model name is touched).
"""

from __future__ import annotations

import importlib
from typing import Any

from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from qa_core.errors import CbctQaError
from qa_core.volume import Volume

__version__ = "0.1.0"

_LAZY = {
    "load_series": "qa_core.dicom_series",
    "load_model": "qa_core.model",
    "attribute_volume": "qa_core.attribution",
    "loo_spearman": "qa_core.statistics",
}

__all__ = ["CATEGORIES", "LIKERT_MAX", "LIKERT_MIN", "CbctQaError", "Volume", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qa_core' has no attribute {name!r}")
