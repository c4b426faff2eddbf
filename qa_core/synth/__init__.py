"""Physics-based simulated head-and-neck CBCT cohort with simulated raters.

Modules: :mod:`~qa_core.synth.phantom` (seeded anatomy in HU and label maps),
:mod:`~qa_core.synth.projector` (sparse-matrix parallel-beam projector and FBP),
:mod:`~qa_core.synth.acquisition` (degradation settings and the acquisition model),
:mod:`~qa_core.synth.raters` (region quality measures, latent quality, rater panel) and
:mod:`~qa_core.synth.cohort` (one session in memory, cohorts on disk and their reader).
"""

from __future__ import annotations

from qa_core.synth.acquisition import AcquisitionSettings, sample_settings
from qa_core.synth.cohort import (
    GENERATOR_VERSION,
    Cohort,
    CohortSession,
    SimulatedSession,
    generate_cohort,
    read_cohort,
    session_label,
    simulate_session,
    subject_label,
)
from qa_core.synth.phantom import (
    LABELS,
    PatientAnatomy,
    build_phantom,
    category_regions,
    sample_anatomy,
)

__all__ = [
    "GENERATOR_VERSION",
    "LABELS",
    "AcquisitionSettings",
    "Cohort",
    "CohortSession",
    "PatientAnatomy",
    "SimulatedSession",
    "build_phantom",
    "category_regions",
    "generate_cohort",
    "read_cohort",
    "sample_anatomy",
    "sample_settings",
    "session_label",
    "simulate_session",
    "subject_label",
]
