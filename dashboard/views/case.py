"""Case: one session under the magnifier.

The axial slice viewer shows the scored CBCT with the raw Grad-CAM map of the chosen category
over it (slice slider, opacity, window presets); beside it the slice-level AE profile with the
current slice marked, the model's predicted scores against each rater's score and the
consensus, the assessment's provenance, a link to the session in XNAT, and, for a failed
session, why scoring failed.

The map colour scale is fixed per category over the whole volume (0 = no attribution, 1 = the
volume's largest map cell), so slices compare; maps are upsampled bilinearly from the target
layer's grid to the square-padded slice and cropped back, as the model saw the slice.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import altair as alt
import numpy as np
import numpy.typing as npt
import pandas as pd
import streamlit as st

from dashboard import data, ui
from qa_core.categories import CATEGORIES

if TYPE_CHECKING:
    from xnat_plugin.gateway import StoredAssessment, XnatGateway

__all__ = ["WINDOWS", "blend", "map_to_slice", "render"]

#: Grey-level window presets (HU low, high).
WINDOWS: dict[str, tuple[float, float] | None] = {
    "soft tissue (W400 L40)": (-160.0, 240.0),
    "bone (W1800 L400)": (-500.0, 1300.0),
    "model input (−500 to 1500 HU)": (-500.0, 1500.0),
    "full range": None,
}


def map_to_slice(cam: npt.NDArray[np.floating], shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Upsample a raw map ``(h, w)`` to the square-padded slice and crop to ``shape`` (rows, cols)."""
    from scipy import ndimage

    rows, cols = shape
    side = max(rows, cols)
    h, w = cam.shape
    up = ndimage.zoom(np.asarray(cam, np.float32), (side / h, side / w), order=1, grid_mode=True,
                      mode="nearest")  # fmt: skip
    r0, c0 = (side - rows) // 2, (side - cols) // 2
    return np.asarray(up[r0:r0 + rows, c0:c0 + cols], dtype=np.float32)


def blend(hu: npt.NDArray[np.floating], cam: npt.NDArray[np.floating], *, window: tuple[float, float],
          vmax: float, opacity: float) -> npt.NDArray[np.uint8]:
    """RGB uint8 of a windowed slice with a jet-coloured map on top (0 stays uncoloured)."""
    from matplotlib import colormaps

    lo, hi = window
    grey = np.clip((np.asarray(hu, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    level = np.clip(np.asarray(cam, np.float32) / vmax, 0, 1) if vmax > 0 else np.zeros_like(grey)
    colour = colormaps["jet"](level)[..., :3]
    alpha = (opacity * (level > 0) * (0.35 + 0.65 * level))[..., None]
    out = rgb * (1 - alpha) + colour * alpha
    return np.asarray(np.round(out * 255), dtype=np.uint8)


@st.cache_resource(ttl=900, max_entries=4, show_spinner="Downloading the scan from XNAT…")
def _volume(_gw: XnatGateway, host: str, user: str, session_id: str, scan_id: str, _ref: Any) -> Any:
    return _gw.load_session_volume(_ref, scan_id)


@st.cache_resource(ttl=900, max_entries=8, show_spinner="Reading the Grad-CAM maps from XNAT…")
def _products(_gw: XnatGateway, host: str, user: str, assessor_id: str, _a: StoredAssessment) -> dict[str, Any]:
    from xnat_plugin.gateway import XnatNotFoundError, read_assessment_file

    out: dict[str, Any] = {"cams": None, "categories": [], "profile": None, "missing": []}
    try:
        blob = read_assessment_file(_gw, _a, "MAPS", "cams.npz")
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            out["cams"] = np.asarray(npz["cams"], dtype=np.float32)
            out["categories"] = [str(c) for c in npz["categories"]]
    except XnatNotFoundError:
        out["missing"].append("MAPS/cams.npz")
    try:
        out["profile"] = pd.read_csv(io.BytesIO(read_assessment_file(_gw, _a, "AE_SLICES", "slice_ae.csv")))
    except XnatNotFoundError:
        out["missing"].append("AE_SLICES/slice_ae.csv")
    return out


def _scores_frame(snap: data.Snapshot, a: StoredAssessment) -> pd.DataFrame:
    table = data.consensus_table(snap)
    cons = {} if table is None else {(v.session, v.category): v.consensus for v in table.values}
    rows = []
    for r in snap.ratings:
        if r.session_label != a.session_label:
            continue
        rows += [{"category": c, "who": r.rater, "kind": "rater", "score": float(s)} for c, s in r.scores.items()]
    for c in CATEGORIES:
        res = a.record.categories.get(c)
        if res is not None:
            rows.append({"category": c, "who": "model", "kind": "model prediction", "score": res.score})
        if (a.session_label, c) in cons:
            rows.append({"category": c, "who": "consensus", "kind": "consensus", "score": cons[(a.session_label, c)]})
    return pd.DataFrame(rows, columns=["category", "who", "kind", "score"])


def _scores_chart(scores: pd.DataFrame) -> Any:
    return alt.Chart(scores, title="Predicted score against the raters and their consensus").mark_point(
        filled=True, size=110).encode(
        y=alt.Y("category:N", sort=list(CATEGORIES), title=""),
        x=alt.X("score:Q", scale=alt.Scale(domain=[0.8, 5.2]), title="Likert score (5 = best)"),
        color=alt.Color("kind:N", title="", scale=alt.Scale(domain=["rater", "consensus", "model prediction"],
                                                          range=["#9aa5b1", "#54a24b", "#e45756"])),
        shape=alt.Shape("kind:N", title="", scale=alt.Scale(domain=["rater", "consensus", "model prediction"],
                                                          range=["circle", "square", "diamond"])),
        tooltip=["category", "who", alt.Tooltip("score:Q", format=".2f")],
    )  # fmt: skip


def _profile_chart(profile: pd.DataFrame, category: str, current: int) -> Any:
    col = f"{category}_ae"
    base = alt.Chart(profile[["slice", col]].rename(columns={col: "AE"}))
    line = base.mark_line(point=True).encode(
        x=alt.X("slice:Q", title="slice (0 = most inferior)", axis=alt.Axis(format="d", tickMinStep=1)), y=alt.Y("AE:Q", title=f"{category} slice AE"),
        tooltip=["slice", alt.Tooltip("AE:Q", format=".4g")])  # fmt: skip
    mark = alt.Chart(pd.DataFrame({"slice": [current]})).mark_rule(color="#e45756", strokeWidth=2).encode(x="slice:Q")
    return alt.layer(line, mark, title=f"Slice-level AE ({category}); red: the slice shown")


def _provenance(a: StoredAssessment) -> pd.DataFrame:
    r = a.record
    spacing = "" if r.spacing is None else " × ".join(f"{v:.3g}" for v in r.spacing) + " mm (z, y, x)"
    items = [
        ("status", r.status), ("model", f"{r.model_name} {r.model_version}".strip()),
        ("model SHA-256", r.model_sha256), ("attribution method", f"{r.cam_method} at {r.target_layer}"),
        ("cbctqa version", r.package_version), ("scan", r.scan_id), ("series UID", r.series_uid),
        ("slices", "" if r.slices is None else str(r.slices)), ("voxel spacing", spacing),
        ("scored in", "" if r.duration_s is None else f"{r.duration_s:.1f} s"),
        ("written", "" if a.insert_date is None else f"{a.insert_date:%Y-%m-%d %H:%M}"),
        ("last changed", "" if a.last_modified is None else f"{a.last_modified:%Y-%m-%d %H:%M}"),
        ("assessment", f"{a.label} ({a.assessor_id})"),
    ]  # fmt: skip
    return pd.DataFrame(items, columns=["field", "value"])


def _viewer(gw: XnatGateway, snap: data.Snapshot, a: StoredAssessment, category: str) -> None:
    from xnat_plugin.gateway import SessionRef

    ref = SessionRef(project=a.project, subject=a.subject, session_id=a.session_id, label=a.session_label,
                     uri=f"/data/experiments/{a.session_id}")  # fmt: skip
    volume = _volume(gw, gw.host, gw.user, a.session_id, a.record.scan_id, ref)
    prod = _products(gw, gw.host, gw.user, a.assessor_id, a)
    hu = volume.hu
    n = hu.shape[0]
    cams = prod["cams"]
    k = prod["categories"].index(category) if cams is not None and category in prod["categories"] else None
    profile = prod["profile"]
    default = 0
    if profile is not None and f"{category}_ae" in profile:
        default = int(profile[f"{category}_ae"].to_numpy().argmax())
    c1, c2, c3 = st.columns([2, 2, 3])
    window_name = c1.selectbox("Window", list(WINDOWS), key="case_window")
    opacity = c2.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="case_opacity")
    s = c3.slider("Slice", 0, max(n - 1, 0), min(default, n - 1), key=f"case_slice_{a.assessor_id}_{category}",
                  help="0 is the most inferior slice; it starts at the slice with the largest AE.")  # fmt: skip
    window = WINDOWS[window_name] or (float(hu.min()), float(hu.max()))
    if k is not None:
        cam = map_to_slice(cams[k, s], hu.shape[1:])
        vmax = float(cams[k].max())
    else:
        cam, vmax = np.zeros(hu.shape[1:], np.float32), 0.0
    rgb = blend(hu[s], cam, window=window, vmax=vmax, opacity=opacity)
    left, right = st.columns([1, 1])
    with left:
        st.image(rgb, caption=f"{a.session_label}, slice {s} of {n - 1}: {category} Grad-CAM "
                              f"(colour 0 → volume maximum), window {window_name}", width="stretch")  # fmt: skip
        if prod["missing"]:
            st.warning("Not in XNAT for this assessment: " + ", ".join(prod["missing"]) +
                       ". Re-score the session to regenerate them.")  # fmt: skip

        def png() -> bytes:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            return buf.getvalue()

        st.download_button("Download this view (PNG)", data=png, key="case_png", icon=":material/image:",
                           file_name=f"{a.session_label}_{category}_slice{s}.png", mime="image/png")  # fmt: skip
    with right:
        if profile is not None and f"{category}_ae" in profile:
            st.altair_chart(_profile_chart(profile, category, s), width="stretch", key="case_profile")
        scores = _scores_frame(snap, a)
        st.altair_chart(_scores_chart(scores), width="stretch", key="case_scores")
        if not (scores["kind"] == "rater").any():
            st.caption("No radiologist has rated this session yet (rate it on the Raters page).")
        wide = scores.pivot_table(index="category", columns="who", values="score").reindex(list(CATEGORIES))
        st.dataframe(wide.round(2), width="stretch", key="case_scores_table")
        ui.csv_button(wide.reset_index(), f"{a.session_label}_scores", key="case_csv")


def render() -> None:
    gw, snap = ui.snapshot_or_stop()
    labels = [s.label for s in snap.sessions]
    if not labels:
        st.info(f"Project {snap.project} has no CT sessions yet.", icon=":material/inbox:")
        return
    version = st.session_state.get("model_version")
    if st.session_state.get("case_session") not in labels:
        scored = data.session_frame(snap, version)
        done = scored[scored["status"] == "complete"]["session"].tolist()
        st.session_state["case_session"] = done[0] if done else labels[0]
    c1, c2 = st.columns([2, 3])
    label = c1.selectbox("Session", labels, key="case_session")
    details = next(s for s in snap.sessions if s.label == label)
    c2.markdown(f"**Acquired** {details.acquisition_date or 'unknown'} · **scanner** {details.scanner}  \n"
                f"[Open {label} in XNAT]({gw.host}/data/experiments/{details.session_id}?format=html)")  # fmt: skip
    mine = [a for a in snap.assessments if a.session_label == label and a.record.model_version == version]
    if not mine:
        st.info(f"Session {label} has not been scored by model {version or '(none yet)'}; it is waiting "
                "for the scoring service.", icon=":material/hourglass_empty:")  # fmt: skip
        return
    a = max(mine, key=lambda x: (x.last_modified or x.insert_date or pd.Timestamp.min.to_pydatetime()))
    if a.record.status == "failed":
        st.warning(f"**Scoring failed** for {label} (scan {a.record.scan_id}, model {a.record.model_version}):\n\n"
                   f"{a.record.failure_reason}", icon=":material/report:")  # fmt: skip
        st.dataframe(_provenance(a), hide_index=True, width="stretch", key="case_prov")
        return
    if a.record.status != "complete":
        st.info(f"Session {label} is being scored (status {a.record.status}). Refresh in a minute.")
        st.dataframe(_provenance(a), hide_index=True, width="stretch", key="case_prov")
        return
    category = ui.category_picker("case")
    res = a.record.categories.get(category)
    if res is not None and res.outlier:
        st.warning(f"**{category} is flagged as an outlier:** {res.outlier_reason}", icon=":material/flag:")
    _viewer(gw, snap, a, category)
    with st.expander("Provenance of this assessment", expanded=False):
        st.dataframe(_provenance(a), hide_index=True, width="stretch", key="case_prov")


if __name__ == "__main__":
    ui.page("Case", render, caption="One session: Grad-CAM over the image, slice-level AE, scores, provenance.")
