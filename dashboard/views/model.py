"""Model: the scoring model's card and its validation table.

The card is the JSON next to the checkpoint (``CBCTQA_MODEL_PATH``, else the shipped
``qa_core/models/default.pt``) and its Markdown rendering ``MODEL_CARD.md`` when present. The
validation table lists, per category, Spearman ρ and MAE of the predicted score against the
consensus on the run's validation volumes and on the held-out cohort. The model versions that
wrote the project's assessments are listed with whether they match this card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data, ui
from qa_core.categories import CATEGORIES

__all__ = ["card_paths", "render", "validation_frame"]


def card_paths() -> tuple[Path, Path]:
    """(checkpoint, card JSON) of the model the services score with."""
    checkpoint: Path | None = None
    try:
        from qa_core.settings import get_settings

        checkpoint = get_settings().model_path
    except Exception:
        checkpoint = None
    if checkpoint is None:
        import qa_core

        checkpoint = Path(qa_core.__file__).parent / "models" / "default.pt"
    return checkpoint, checkpoint.with_name(checkpoint.stem + ".card.json")


@st.cache_data(ttl=600, max_entries=4, show_spinner=False)
def _read_card(path: str) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text(encoding="utf-8")))


def validation_frame(card: dict[str, Any]) -> pd.DataFrame:
    """Per category: ρ, p and MAE of prediction vs consensus on validation and held-out volumes."""
    rows = []
    for cat in CATEGORIES:
        row: dict[str, Any] = {"category": cat}
        for part, title in (("validation", "validation"), ("heldout", "held-out")):
            m = (card.get(part) or {}).get("metrics", {}).get(cat)
            if m:
                row[f"{title} n"] = m.get("n_volumes")
                row[f"{title} ρ"] = round(float(m["spearman_rho"]), 2)
                row[f"{title} p"] = f"{float(m['spearman_p']):.2g}"
                row[f"{title} MAE"] = round(float(m["mae"]), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def render() -> None:
    checkpoint, card_path = card_paths()
    if not card_path.is_file():
        st.error(f"No model card at {card_path}. Keep '{card_path.name}' next to the checkpoint "
                 f"{checkpoint.name} (written by `cbctqa train`).")  # fmt: skip
        return
    card = _read_card(str(card_path))
    arch = card.get("architecture", {})
    sha = str(card.get("sha256", ""))
    trained = (card.get("training", {}) or {}).get("data", {}) or {}
    st.markdown(
        f"**Architecture** `{arch.get('name', '?')}` (widths {arch.get('widths', '?')}) · **input** one axial slice, "
        f"{card.get('input_size', '?')}² px, window {card.get('hu_window', '?')} HU · **Grad-CAM layer** "
        f"`{card.get('target_layer', '?')}` · **trained on** {trained.get('n_sessions', '?')} "
        f"{trained.get('kind', '?')} sessions"
    )
    st.caption(f"Checkpoint {checkpoint} · SHA-256 {sha} · created {card.get('created', '?')}")
    st.subheader("Validation: predicted score against consensus")
    table = validation_frame(card)
    st.dataframe(table, hide_index=True, width="stretch", key="md_validation")
    st.caption("Spearman ρ (higher is better) and mean absolute error in Likert points (lower is better) of "
               "the volume-level predicted score against the raters' consensus. Simulated data only.")  # fmt: skip
    ui.csv_button(table, "model_validation", key="md_csv")
    try:
        _gw, snap = ui.snapshot_or_stop()
    except Exception:
        snap = None
    if snap is not None and snap.assessments:
        versions = data.model_versions(snap)
        mine = {card.get("version"), f"sha-{sha[:12]}"} - {None, "sha-"}
        # queued and failed assessments carry the version only: the hash comes from a complete
        # one, or from this card when the version is this card's
        shas = {v: sha for v in versions if v in mine and sha}
        for a in snap.assessments:
            if a.record.model_sha256:
                shas.setdefault(a.record.model_version, a.record.model_sha256)
        st.subheader(f"Model versions in {snap.project}")
        st.dataframe(pd.DataFrame([{"model version": v, "SHA-256": shas.get(v, ""),
                                    "this card": "yes" if v in mine or (sha and shas.get(v) == sha)
                                    else "no"} for v in versions]),
                     hide_index=True, width="stretch", key="md_versions")  # fmt: skip
    md = card_path.with_name("MODEL_CARD.md")
    if md.is_file():
        with st.expander("The full model card", expanded=False):
            st.markdown(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    ui.page("Model", render, caption="The scoring model's card and validation.")
