"""cFVD and sFVD: FVD per class and per subject, summarised as mean and standard deviation (LFDM's definition).

LFDM (Ni et al. 2023) reports, besides FVD over the whole test set, the mean +- std of the FVDs computed
separately for each class (cFVD) and for each test subject (sFVD): they show whether quality is even
across actions and people. The features are extracted once (`fvd.extract_features`) and split here.
A group with fewer than 2 clips on either side has no covariance: it is skipped and listed, never
silently counted. The std is the population std over groups (numpy's default, as LFDM's code uses).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dvdm.evaluate.errors import EvaluationError
from dvdm.evaluate.fvd import VideoFeatures, frechet_distance_features


@dataclass
class GroupFVD:
    """mean/std of per-group FVD; `per_group` maps each group to its FVD and clip counts."""

    kind: str  # "class" (cFVD) or "subject" (sFVD), or any other grouping
    mean: float
    std: float
    per_group: dict[str, dict[str, float | int]]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std, "n_groups": len(self.per_group),
                "per_group": self.per_group, "skipped": self.skipped}


def group_fvd(real: VideoFeatures, real_groups: Sequence[Hashable], fake: VideoFeatures,
              fake_groups: Sequence[Hashable], kind: str = "class", min_clips: int = 2) -> GroupFVD:
    """FVD between the real and generated clips of each group present on both sides; mean and std over groups.

    real_groups / fake_groups: one key per clip (class name, subject id, ...), aligned with the features.
    """
    if len(real_groups) != len(real) or len(fake_groups) != len(fake):
        raise ValueError(f"group keys ({len(real_groups)} real, {len(fake_groups)} generated) do not match the "
                         f"clips ({len(real)} real, {len(fake)} generated)")
    if min_clips < 2:
        raise ValueError(f"min_clips must be >= 2 (a covariance), got {min_clips}")
    r_keys, f_keys = np.array([str(g) for g in real_groups]), np.array([str(g) for g in fake_groups])
    per_group: dict[str, dict[str, float | int]] = {}
    skipped: dict[str, str] = {}
    for key in sorted(set(r_keys) | set(f_keys)):
        n_r, n_f = int((r_keys == key).sum()), int((f_keys == key).sum())
        if n_r < min_clips or n_f < min_clips:
            skipped[key] = f"{n_r} real and {n_f} generated clips (at least {min_clips} each needed)"
            continue
        per_group[key] = {"fvd": frechet_distance_features(real.features[r_keys == key],
                                                            fake.features[f_keys == key]),
                          "n_real": n_r, "n_fake": n_f}
    if not per_group:
        raise EvaluationError(f"no {kind} has at least {min_clips} real and {min_clips} generated clips; "
                              f"per-{kind} FVD cannot be computed")
    values = np.array([g["fvd"] for g in per_group.values()], np.float64)
    return GroupFVD(kind, float(values.mean()), float(values.std()), per_group, skipped)


def cfvd(real: VideoFeatures, real_classes: Sequence[Hashable], fake: VideoFeatures,
         fake_classes: Sequence[Hashable]) -> GroupFVD:
    """Per-class FVD, mean +- std (LFDM's cFVD)."""
    return group_fvd(real, real_classes, fake, fake_classes, kind="class")


def sfvd(real: VideoFeatures, real_subjects: Sequence[Hashable], fake: VideoFeatures,
         fake_subjects: Sequence[Hashable]) -> GroupFVD:
    """Per-subject FVD, mean +- std (LFDM's sFVD)."""
    return group_fvd(real, real_subjects, fake, fake_subjects, kind="subject")
