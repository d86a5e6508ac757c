"""Names for latent axes from the run's own data: each axis is named by the morphology *family*
it follows most strongly on the run's images, or called unnamed with the reason.

Pure functions: the correlation table (:mod:`drlcore.analysis.correlation` output, columns dim, dim_name,
feature, method, value, ci_low, ci_high, p_value, q_value, n) and the source names in, plain dicts
out. Nothing is read from disk.

Rule (``NamingConfig``):

1. Only ``morph_*`` features that belong to a family count (orientation is an angle, not a
   family; ``factor_*`` columns are the synthetic truth of a demo, not morphology).
2. A feature *qualifies* for an axis when |r| >= ``min_abs_r`` and its Benjamini-Hochberg q-value
   (computed by the engine across all pairs of the method) is below ``alpha``.
3. An axis is named after the family of its strongest qualifying feature. An axis without one is
   ``unnamed``, and the reason cites its strongest association. An inactive axis (collapsed to the
   prior in the model) is ``inactive`` whatever it correlates with.
4. An axis anchored to a measurement during fine-tuning (source factor ``anchor:<feature>``) is
   judged on that measurement alone: it is named after it (``z0: area``) when the measurement
   qualifies by rule 2, else it is unnamed with the reason, whatever else it follows.
5. When several axes take the same family, the strongest (largest |r|) keeps the plain name and
   the others get ``size (2)``, ``size (3)`` in decreasing strength.

Display names keep the engine's ``z<j>: name`` form (``z2: size``); unnamed axes read
``z3 (unnamed)``. The source factor stays as provenance ("learned as scale on the synthetic
source").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from drlcore.data.channels import is_dna_channel
from drlcore.errors import DrlError

__all__ = ["FAMILIES", "FAMILY_FEATURES", "NamingConfig", "feature_family", "feature_channel",
           "name_axes",
           "best_family_axes", "axis_label", "axis_help"]

# "dna": DNA content, the background-subtracted integrated intensity of a DNA / nuclear stain over
# the cell or its nucleus (multi-channel images with a DNA channel, drlcore.data.channels).
FAMILIES: tuple[str, ...] = ("size", "shape", "colour", "intensity", "dna", "texture")

# The morph_* columns drlcore.analysis.morphology produces, by family.
FAMILY_FEATURES: dict[str, tuple[str, ...]] = {
    "size": ("morph_area", "morph_area_fraction", "morph_equivalent_diameter", "morph_perimeter",
             "morph_major_axis", "morph_minor_axis"),
    "shape": ("morph_eccentricity", "morph_circularity", "morph_solidity", "morph_extent"),
    "colour": ("morph_hue", "morph_saturation", "morph_mean_r", "morph_mean_g", "morph_mean_b"),
    "intensity": ("morph_value", "morph_intensity_mean", "morph_intensity_std"),
    "texture": ("morph_glcm_contrast", "morph_glcm_homogeneity"),
}
_BY_FEATURE = {f: fam for fam, feats in FAMILY_FEATURES.items() for f in feats}


# Per-channel columns of multi-channel images (drlcore.analysis.morphology):
# morph_<channel>_<compartment>_<measure>, morph_<channel>_background, and the nucleus and
# cytoplasm masks' size and shape.
_COMPARTMENT_RE = re.compile(r"^morph_(?P<channel>.+)_(?P<compartment>cell|nucleus|cytoplasm)_"
                             r"(?P<measure>integrated|mean|std|min|q25|median|q75|max|mad|"
                             r"mass_displacement|glcm_contrast|glcm_homogeneity)$")
_MASK_FAMILIES = {"morph_nucleus_area": "size", "morph_nucleus_equivalent_diameter": "size",
                  "morph_cytoplasm_area": "size", "morph_nucleus_eccentricity": "shape",
                  "morph_nucleus_fraction": "shape"}


def feature_family(feature: str) -> str | None:
    """The family of a ``morph_*`` column, None for columns that belong to none (orientation,
    the frame's background levels, ``factor_*``).

    Per-channel columns ``morph_<channel>_<compartment>_<measure>``: GLCM measures are texture;
    the integrated intensity of a DNA-like channel (:func:`drlcore.data.channels.is_dna_channel`)
    over the cell or the nucleus is ``dna`` (DNA content); every other measure is intensity.
    Nucleus and cytoplasm areas are size, the nucleus' eccentricity and share of the cell shape.
    Older per-channel means (``morph_ch<k>_*``) and any other GLCM column are placed by name."""
    feature = str(feature)
    if feature in _BY_FEATURE:
        return _BY_FEATURE[feature]
    if feature in _MASK_FAMILIES:
        return _MASK_FAMILIES[feature]
    if not feature.startswith("morph_"):
        return None
    if feature.endswith("_background"):
        return None  # the frame's level, not the object's
    match = _COMPARTMENT_RE.match(feature)
    if match:
        measure = match.group("measure")
        if measure.startswith("glcm_"):
            return "texture"
        if (measure == "integrated" and match.group("compartment") in ("cell", "nucleus")
                and is_dna_channel(match.group("channel"))):
            return "dna"
        return "intensity"
    if feature.startswith("morph_glcm_"):
        return "texture"
    if re.match(r"morph_ch\d", feature) or "intensity" in feature:
        return "intensity"
    return None


def feature_channel(feature: str) -> str | None:
    """The channel part of a per-channel column (``morph_DNA_cell_mean`` -> ``DNA``), None for
    object-level columns."""
    match = _COMPARTMENT_RE.match(str(feature))
    return match.group("channel") if match else None


@dataclass(frozen=True)
class NamingConfig:
    # |r| a feature must reach for its family to name an axis. 0.5, the bar issue 8 sets for a
    # name to be supported by its own data: at 0.4 the axis_quality benchmark found names resting
    # on |rho| 0.41-0.47, which a colleague re-measuring would call weak.
    min_abs_r: float = 0.5
    alpha: float = 0.05  # BH q-value below which an association counts as significant
    method: str = "spearman"  # which correlation of the table names the axes

    def __post_init__(self):
        if not 0.0 < self.min_abs_r <= 1.0:
            raise DrlError(f"min_abs_r must lie in (0, 1], got {self.min_abs_r}")
        if not 0.0 < self.alpha < 1.0:
            raise DrlError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.method not in ("pearson", "spearman"):
            raise DrlError(f"naming method must be 'pearson' or 'spearman', got {self.method!r}")


_METHOD_SYMBOL = {"pearson": "r", "spearman": "ρ"}


def _short(feature: str) -> str:
    return str(feature).removeprefix("morph_").replace("_", " ")


def _source_label(name: str) -> str:
    """'z3: scale' -> 'scale'; 'z3' -> ''."""
    name = str(name)
    return name.split(":", 1)[1].strip() if ":" in name else ""


def _provenance(source_name: str, source_factor) -> str:
    factor = str(source_factor) if source_factor else ""
    if factor.startswith("anchor:"):
        return f"anchored to {factor.removeprefix('anchor:')} during fine-tuning"
    label = factor or _source_label(source_name)
    if not label or label in ("unassigned", "inactive") or label.startswith("mixed"):
        what = label or "unassigned"
        return f"no single factor on the synthetic source ({what})"
    return f"learned as {label.removesuffix(' (anchored)')} on the synthetic source"


def name_axes(corr: pd.DataFrame, source_names: Sequence[str], inactive: Sequence[int] = (),
              source_factors: Sequence[str | None] | None = None,
              config: NamingConfig = NamingConfig()) -> list[dict]:
    """One record per axis (in axis order): ``dim``, ``name`` (display, ``z2: size``), ``label``
    (``size``, ``size (2)``, ``unnamed``, ``inactive``), ``status`` (named / unnamed / inactive),
    ``family``, ``feature``, ``method``, ``r``, ``ci_low``, ``ci_high``, ``q_value``, ``n``,
    ``reason`` (why unnamed or inactive, else None), ``source_name``, ``provenance``.

    ``feature``/``r``/... are the best qualifying feature for a named axis and the strongest
    family feature otherwise (None when the axis has no usable correlation at all).
    """
    n_dims = len(source_names)
    inactive = {int(j) for j in inactive}
    needed = {"dim", "feature", "method", "value", "ci_low", "ci_high", "q_value"}
    if len(corr) and not needed <= set(corr.columns):
        raise DrlError(f"the correlation table lacks columns {sorted(needed - set(corr.columns))}")
    if source_factors is not None and len(source_factors) != n_dims:
        source_factors = None
    rows = corr[(corr["method"] == config.method) & corr["value"].notna()] if len(corr) else corr
    if len(rows):
        rows = rows.assign(family=rows["feature"].map(feature_family))
        rows = rows[rows["family"].notna()].copy()
        rows["strength"] = rows["value"].abs()
        rows = rows.sort_values(["dim", "strength", "feature"], ascending=[True, False, True],
                                kind="stable")
    symbol = _METHOD_SYMBOL[config.method]

    records = []
    for j in range(n_dims):
        source_name = str(source_names[j])
        factor = source_factors[j] if source_factors is not None else None
        rec = {"dim": j, "name": None, "label": None, "status": None, "family": None,
               "feature": None, "method": config.method, "r": None, "ci_low": None,
               "ci_high": None, "q_value": None, "n": None, "reason": None,
               "source_name": source_name, "provenance": _provenance(source_name, factor)}
        mine = rows[rows["dim"] == j] if len(rows) else rows
        anchor = str(factor).removeprefix("anchor:") if str(factor).startswith("anchor:") else None
        if anchor is not None and len(mine):
            anchor_col = anchor if anchor.startswith("morph_") else f"morph_{anchor}"
            mine = mine[mine["feature"] == anchor_col]
        rec["anchor"] = anchor
        qualifying = mine[(mine["strength"] >= config.min_abs_r)
                          & (mine["q_value"] < config.alpha)] if len(mine) else mine
        pick = qualifying.iloc[0] if len(qualifying) else (mine.iloc[0] if len(mine) else None)
        if pick is not None:
            rec.update(family=str(pick["family"]), feature=str(pick["feature"]),
                       r=float(pick["value"]), ci_low=_num(pick["ci_low"]),
                       ci_high=_num(pick["ci_high"]), q_value=_num(pick["q_value"]),
                       n=int(pick["n"]) if "n" in pick and pd.notna(pick["n"]) else None)
        if j in inactive:
            rec.update(status="inactive", label="inactive", family=None,
                       reason="the axis is inactive in the model (its code barely varies), so "
                              "it carries no information to name")
        elif len(qualifying):
            rec.update(status="named")
        else:
            rec.update(status="unnamed", label="unnamed", family=None)
            rule = f"no family with |{symbol}| >= {config.min_abs_r:g} and BH q < {config.alpha:g}"
            if pick is None:
                rec["reason"] = f"{rule}; no morphology was measured for this axis"
            else:
                rec["reason"] = (f"{rule}; strongest: {_short(pick['feature'])} "
                                 f"{symbol}={pick['value']:.2f} (q {_fmt_q(pick['q_value'])})")
        records.append(rec)

    for rec in records:
        if rec["anchor"] is not None and rec["status"] == "named":
            rec["label"] = _short(rec["anchor"])
    # Shared families: the strongest keeps the plain name (anchored axes carry their anchor's).
    for family in sorted({r["family"] for r in records if r["family"]}):
        named = sorted((r for r in records if r["status"] == "named" and r["family"] == family
                        and r["anchor"] is None),
                       key=lambda r: (-abs(r["r"]), r["dim"]))
        for rank, rec in enumerate(named, start=1):
            rec["label"] = family if rank == 1 else f"{family} ({rank})"
    for rec in records:
        j = rec["dim"]
        rec["name"] = f"z{j} (unnamed)" if rec["status"] == "unnamed" else f"z{j}: {rec['label']}"
    return records


def best_family_axes(corr: pd.DataFrame, axes: Sequence[Mapping],
                     families: Sequence[str] = ("size", "colour", "intensity"),
                     config: NamingConfig = NamingConfig()) -> dict[str, dict]:
    """For each family, the active axis with the strongest association with any of the family's
    features (named after it or not): ``{family: {dim, name, feature, r, ci_low, ci_high,
    q_value, method}}``; families with no measured feature are left out."""
    if not len(corr):
        return {}
    inactive = {int(a["dim"]) for a in axes if a.get("status") == "inactive"}
    names = {int(a["dim"]): a["name"] for a in axes}
    rows = corr[(corr["method"] == config.method) & corr["value"].notna()]
    rows = rows[~rows["dim"].isin(inactive)]
    out = {}
    for family in families:
        fam = rows[rows["feature"].map(feature_family) == family]
        if not len(fam):
            continue
        top = fam.loc[fam["value"].abs().idxmax()]
        out[family] = {"dim": int(top["dim"]), "name": names.get(int(top["dim"]), f"z{top['dim']}"),
                       "feature": str(top["feature"]), "r": float(top["value"]),
                       "ci_low": _num(top["ci_low"]), "ci_high": _num(top["ci_high"]),
                       "q_value": _num(top["q_value"]), "method": config.method}
    return out


def axis_label(axis: Mapping, with_r: bool = True) -> str:
    """One line for an axis: ``z2: size — area ρ=0.62 [0.58, 0.66]``; unnamed and inactive axes
    get their reason instead."""
    name = axis.get("name") or f"z{axis.get('dim')}"
    if axis.get("status") != "named" or not with_r:
        return str(name)
    symbol = _METHOD_SYMBOL.get(str(axis.get("method")), "r")
    ci = ""
    if axis.get("ci_low") is not None and axis.get("ci_high") is not None:
        ci = f" [{axis['ci_low']:.2f}, {axis['ci_high']:.2f}]"
    return f"{name} — {_short(axis['feature'])} {symbol}={axis['r']:.2f}{ci}"


def axis_help(axis: Mapping) -> str:
    """The longer explanation for hover/help: the association (or why there is none), the q-value,
    and where the axis came from."""
    parts = []
    symbol = _METHOD_SYMBOL.get(str(axis.get("method")), "r")
    if axis.get("status") == "named":
        ci = ""
        if axis.get("ci_low") is not None and axis.get("ci_high") is not None:
            ci = f", 95% CI [{axis['ci_low']:.2f}, {axis['ci_high']:.2f}]"
        parts.append(f"Named from this run's images: {_short(axis['feature'])} ({axis['family']} "
                     f"family), {symbol} = {axis['r']:.2f}{ci}, BH q {_fmt_q(axis.get('q_value'))}.")
    elif axis.get("reason"):
        parts.append(f"{str(axis['status']).capitalize()}: {axis['reason']}.")
    if axis.get("provenance"):
        parts.append(f"Provenance: {axis['provenance']}.")
    return " ".join(parts)


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(float(value)) else float(value)


def _fmt_q(q) -> str:
    if q is None or not np.isfinite(float(q)):
        return "n/a"
    return f"= {float(q):.2g}" if float(q) >= 1e-3 else "< 0.001"
