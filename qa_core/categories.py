"""The contract categories and Likert scale."""

from __future__ import annotations

from typing import Final

__all__ = ["CATEGORIES", "LIKERT_MAX", "LIKERT_MIN"]

#: The five rated categories, in contract order (model output order too).
CATEGORIES: Final[tuple[str, ...]] = ("parotid", "submandibular", "larynx", "mandible", "overall")
#: Likert scale bounds; 5 is best.
LIKERT_MIN: Final[int] = 1
LIKERT_MAX: Final[int] = 5
