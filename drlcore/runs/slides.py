"""``drl figures``: the slide set of a run as PNG and SVG files, each stamped with what made it.

Static figures drawn with matplotlib (no browser, no server), for a lab meeting or a paper:

- ``axis-<j>-<name>.png/.svg``: the montage of latent axis *j*, real images from one extreme of
  the axis to the other (several rows: the nearest objects at each step), optionally of one class;
- ``correlations.png/.svg``: latent axes x handcrafted features (Pearson r), features grouped by
  family (size, shape, colour, intensity, texture);
- ``axes-card.png/.svg``: every axis (anchored first, then the strongest free ones), its
  |Spearman rho| with the measure it is judged on and the 95% CI, next to the best PCA axis of
  the raw features and the ridge ceiling (analysis.json ``axis_card``);
- ``class-map.png/.svg``: the UMAP (or PCA) map coloured by class;
- ``anomaly-map.png/.svg``: the same map coloured by the combined anomaly score.

Every figure carries a caption line (run, model hash prefix, backbone, data fingerprint, date)
and the same text in the file's own metadata (PNG text chunks, SVG ``<metadata>``), so a figure
that travels by itself still says where it came from. Colours are colour-blind safe (Okabe-Ito
for classes, cividis for scores, a blue-orange diverging map for correlations).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from drlcore.errors import DrlError
from drlcore.io import atomic_write_bytes

__all__ = ["SlideConfig", "figure_stamp", "axis_montage", "write_axis_montage", "correlation_figure",
           "axis_card_figure", "draw_axis_card", "map_figure", "write_slide_set", "OKABE_ITO"]

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
             "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass(frozen=True)
class SlideConfig:
    width_in: float = 13.33  # a 16:9 slide at 96 dpi is 1280 x 720 px
    height_in: float = 7.5
    dpi: int = 150
    formats: tuple[str, ...] = ("png", "svg")
    n_steps: int = 9
    n_rows: int = 3
    label: str | None = None  # montage of one class only
    map_name: str | None = None  # "umap" or "pca"; default: UMAP when present

    def __post_init__(self) -> None:
        bad = sorted(set(self.formats) - {"png", "svg"})
        if bad:
            raise DrlError(f"figure formats must be png and/or svg, not {bad}")
        if self.width_in <= 0 or self.height_in <= 0 or self.dpi < 30:
            raise DrlError("figure size must be positive and dpi at least 30")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a window
    import matplotlib.pyplot as plt

    return plt


def figure_stamp(run_dir: str | Path, when: _dt.date | None = None) -> dict[str, str]:
    """The caption line and the metadata fields every exported figure carries."""
    from drlcore.data import rundir

    run_dir = Path(run_dir)
    prov = rundir.provenance(run_dir)
    date = (when or _dt.date.today()).isoformat()
    model = str(prov.get("model hash") or "no model")[:12]
    data = str(prov.get("data fingerprint") or "unknown")[:12]
    backbone = str(prov.get("backbone") or "unknown backbone")
    caption = (f"run {run_dir.name} · model {model} · backbone {backbone} · data {data} · "
               f"{date} · drl")
    return {"caption": caption, "run": run_dir.name, "model_hash": model, "backbone": backbone,
            "data_fingerprint": data, "date": date}


def _save(fig, stem: Path, stamp: dict[str, str], title: str, formats) -> list[Path]:
    fig.text(0.005, 0.005, stamp["caption"], fontsize=8, color="#52606d", ha="left", va="bottom")
    written = []
    for fmt in formats:
        buf = io.BytesIO()
        description = json.dumps(stamp)
        if fmt == "png":
            metadata = {"Title": title, "Description": description, "Software": "drl"}
        else:
            metadata = {"Title": title, "Description": description, "Creator": "drl",
                        "Date": stamp["date"]}
        # Text stays text in SVG (searchable, editable in Inkscape or PowerPoint), not outlines.
        with _pyplot().rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format=fmt, metadata=metadata)
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    _pyplot().close(fig)
    return written


def _objects(run_dir: Path) -> pd.DataFrame:
    from drlcore.data import rundir

    path = run_dir / rundir.OBJECTS
    if not path.is_file():
        raise DrlError(f"{run_dir} has no {rundir.OBJECTS}: make the run first (`drl run`)")
    return rundir.read_table(run_dir, rundir.OBJECTS)


def _thumb(thumbs, sha: str) -> np.ndarray | None:
    """One thumbnail as RGB from the run's store (:func:`drlcore.data.rundir.open_thumbs`)."""
    import io

    from PIL import Image

    data = thumbs.get(sha)
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def axis_montage(run_dir: str | Path, dim: int, config: SlideConfig = SlideConfig()):
    """The montage figure of latent axis ``dim`` (matplotlib Figure)."""
    from drlcore.data import rundir
    from drlcore.analysis.traversal import traversal_grid, traversal_values

    run_dir = Path(run_dir)
    objects = _objects(run_dir)
    zcols = rundir.latent_columns(objects)
    names = _axis_names(run_dir, len(zcols))
    z = objects[zcols].to_numpy(np.float64)
    keep = np.isfinite(z).all(axis=1)
    if config.label is not None:
        if "label" not in objects:
            raise DrlError("this run has no class labels to filter the montage by")
        keep &= (objects["label"].astype(str) == config.label).to_numpy()
        if not keep.any():
            raise DrlError(f"no objects of class {config.label!r} in this run")
    rows = np.flatnonzero(keep)
    grid = rows[traversal_grid(z[rows], dim, config.n_steps, config.n_rows)]
    values = traversal_values(z[rows], dim, config.n_steps)

    thumbs = rundir.open_thumbs(run_dir)
    plt = _pyplot()
    fig, axes = plt.subplots(config.n_rows, config.n_steps,
                             figsize=(config.width_in, config.height_in), dpi=config.dpi,
                             squeeze=False)
    for r in range(config.n_rows):
        for c in range(config.n_steps):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = _thumb(thumbs, str(objects["sha256"].iloc[grid[r, c]]))
            if image is not None:
                ax.imshow(image)
            if r == config.n_rows - 1:
                ax.set_xlabel(f"{values[c]:+.2f}", fontsize=11)
    which = f", class {config.label}" if config.label else ""
    fig.suptitle(f"{_display(names[dim], dim)}{which}: from low to high values of the axis",
                 fontsize=16, x=0.01, ha="left")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.1, wspace=0.04, hspace=0.04)
    return fig


def write_axis_montage(run_dir: str | Path, dim: int, out_dir: str | Path,
                       config: SlideConfig = SlideConfig()) -> list[Path]:
    """One axis montage, stamped, as ``out_dir/axis-<j>-<name>[-<class>].<fmt>`` for each of
    ``config.formats`` (the files :func:`write_slide_set` writes for that axis, or of one class)."""
    from drlcore.data import rundir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    names = _axis_names(run_dir, len(rundir.latent_columns(_objects(run_dir))))
    if not 0 <= dim < len(names):
        raise DrlError(f"latent axis {dim} does not exist; the run has {len(names)} (0..{len(names) - 1})")
    fig = axis_montage(run_dir, dim, config)
    which = f"-{_slug(config.label)}" if config.label else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"latent axis {_display(names[dim], dim)}" + (f", class {config.label}" if config.label else "")
    return _save(fig, out_dir / f"axis-{dim}-{_slug(names[dim])}{which}", figure_stamp(run_dir), title,
                 config.formats)


def _axis_names(run_dir: Path, n: int) -> list[str]:
    from drlcore.data import rundir

    names = rundir.read_analysis(run_dir).get("dim_names")
    if not names or len(names) != n:
        names = rundir.dim_names(run_dir, n)
    return [str(x) for x in names]


def _display(name: str, j: int) -> str:
    """``z3: size`` whether or not the stored name already carries its ``z3`` prefix."""
    return name if name.split(":")[0].split(" ")[0] == f"z{j}" else f"z{j}: {name}"


def _feature_order(features: list[str]) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Features grouped by family (size, shape, colour, intensity, texture, other), and the
    (family, first, last) spans for the labels."""
    try:
        from drlcore.analysis.naming import feature_family
    except ImportError:  # pragma: no cover - naming ships with drlcore
        def feature_family(name: str) -> str | None:
            return None
    order = ["size", "shape", "colour", "intensity", "texture"]
    keyed = sorted(features, key=lambda f: (order.index(feature_family(f))
                                            if feature_family(f) in order else len(order), f))
    spans: list[tuple[str, int, int]] = []
    for i, f in enumerate(keyed):
        fam = feature_family(f) or "other"
        if spans and spans[-1][0] == fam:
            spans[-1] = (fam, spans[-1][1], i)
        else:
            spans.append((fam, i, i))
    return keyed, spans


def correlation_figure(run_dir: str | Path, config: SlideConfig = SlideConfig()):
    """Latent axes x handcrafted features, Pearson r, features grouped by family."""
    from drlcore.data import rundir

    run_dir = Path(run_dir)
    path = run_dir / rundir.CORRELATIONS
    corr = rundir.read_table(run_dir, rundir.CORRELATIONS) if path.is_file() else pd.DataFrame()
    if corr.empty:
        raise DrlError(f"{run_dir} has no latent-morphology correlations (run `drl analyze`)")
    pear = corr[(corr["method"] == "pearson") & corr["feature"].str.startswith("morph_")]
    table = pear.pivot_table(index="dim", columns="feature", values="value")
    features, spans = _feature_order(list(table.columns))
    table = table[features]
    names = _axis_names(run_dir, int(corr["dim"].max()) + 1)

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(config.width_in, config.height_in), dpi=config.dpi)
    im = ax.imshow(table.to_numpy(float), cmap="PuOr_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(table.index)))
    ax.set_yticklabels([_display(names[int(d)], int(d)) for d in table.index], fontsize=10)
    ax.set_xticks(range(len(features)))
    ax.set_xticklabels([f[len("morph_"):].replace("_", " ") for f in features], rotation=60,
                       ha="right", fontsize=9)
    for fam, first, last in spans:
        ax.annotate(fam, xy=((first + last) / 2, -0.6), xycoords=("data", "data"),
                    ha="center", va="bottom", fontsize=11, fontweight="bold",
                    annotation_clip=False)
        if first > 0:
            ax.axvline(first - 0.5, color="white", lw=2)
    fig.colorbar(im, ax=ax, label="Pearson r", fraction=0.03)
    ax.set_title("Latent axes vs handcrafted morphology", fontsize=16, loc="left", pad=28)
    fig.subplots_adjust(left=0.2, right=0.93, top=0.86, bottom=0.28)
    return fig


def draw_axis_card(card, config: SlideConfig = SlideConfig(), top: int | None = 16):
    """The axis card drawn with matplotlib from analysis.json's ``axis_card`` records."""
    from drlcore.analysis.axis_card import card_label, card_order

    rows = [r for r in card_order(card) if r.get("rho") is not None][:top]
    if not rows:
        raise DrlError("no axis of this run has a measure to be judged on (no axis card)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(config.width_in, config.height_in), dpi=config.dpi)
    y = np.arange(len(rows))
    ceiling = [r.get("ceiling_rho") or 0.0 for r in rows]
    ax.barh(y, ceiling, color="0.9", label="ceiling (ridge on raw features)")
    pca = np.array([np.nan if r.get("pca_rho") is None else r["pca_rho"] for r in rows])
    ax.scatter(pca, y, marker="s", facecolors="none", edgecolors=OKABE_ITO[5], s=70,
               label="best PCA axis", zorder=3)
    rho = np.array([abs(r["rho"]) for r in rows])
    lo = np.array([min(abs(r["ci_low"]), abs(r["ci_high"])) if r.get("ci_low") is not None
                   and np.sign(r["ci_low"]) == np.sign(r["ci_high"]) else 0.0 for r in rows])
    hi = np.array([max(abs(r["ci_low"]), abs(r["ci_high"])) if r.get("ci_high") is not None
                   else a for r, a in zip(rows, rho, strict=True)])
    colours = [OKABE_ITO[4] if r.get("kind") == "anchored" else OKABE_ITO[1] for r in rows]
    ax.errorbar(rho, y, xerr=[np.clip(rho - lo, 0, None), np.clip(hi - rho, 0, None)],
                fmt="none", ecolor="0.3", zorder=4)
    ax.scatter(rho, y, c=colours, s=70, zorder=5, label="this axis, |ρ| with 95% CI")
    ax.set_yticks(y)
    ax.set_yticklabels([card_label(r) for r in rows], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"|Spearman ρ| with the measure, on {rows[0].get('rows', 'all images')}")
    ax.legend(loc="lower right", frameon=False, fontsize=10)
    ax.set_title("Axis card: each axis vs the best PCA axis and the ceiling", fontsize=16,
                 loc="left")
    fig.subplots_adjust(left=0.32, right=0.97, top=0.9, bottom=0.1)
    return fig


def axis_card_figure(run_dir: str | Path, config: SlideConfig = SlideConfig()):
    """The axis card of a run (analysis.json ``axis_card``)."""
    from drlcore.data import rundir

    card = (rundir.read_analysis(Path(run_dir)).get("axis_card") or {}).get("axes") or []
    return draw_axis_card(card, config)


def map_figure(run_dir: str | Path, colour_by: str = "label", config: SlideConfig = SlideConfig()):
    """The 2-D map coloured by class (``label``) or by a numeric column (e.g. anomaly_score)."""
    from drlcore.data import rundir

    run_dir = Path(run_dir)
    objects = _objects(run_dir)
    name = config.map_name or ("umap" if "umap_x" in objects else "pca")
    if f"{name}_x" not in objects:
        raise DrlError(f"{run_dir} has no {name.upper()} map (run `drl analyze`)")
    x, y = objects[f"{name}_x"].to_numpy(float), objects[f"{name}_y"].to_numpy(float)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(config.width_in, config.height_in), dpi=config.dpi)
    size = max(2.0, min(30.0, 3e4 / max(len(objects), 1)))
    if colour_by == "label" and "label" in objects and objects["label"].notna().any():
        labels = objects["label"].astype(str)
        for i, cls in enumerate(sorted(labels.unique())):
            m = (labels == cls).to_numpy()
            ax.scatter(x[m], y[m], s=size, color=OKABE_ITO[i % len(OKABE_ITO)],
                       marker=_MARKERS[(i // len(OKABE_ITO)) % len(_MARKERS)], label=cls,
                       alpha=0.8, linewidths=0)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=10,
                  markerscale=max(1.0, 6 / np.sqrt(size)))
        title = f"{name.upper()} map of the latent codes, by class"
    else:
        if colour_by not in objects:
            raise DrlError(f"no column {colour_by!r} to colour the map by")
        values = objects[colour_by].to_numpy(float)
        sc = ax.scatter(x, y, s=size, c=values, cmap="cividis", linewidths=0)
        fig.colorbar(sc, ax=ax, label=colour_by.replace("_", " "), fraction=0.03)
        title = f"{name.upper()} map of the latent codes, by {colour_by.replace('_', ' ')}"
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{name.upper()} 1")
    ax.set_ylabel(f"{name.upper()} 2")
    ax.set_title(title, fontsize=16, loc="left")
    fig.subplots_adjust(left=0.05, right=0.8, top=0.9, bottom=0.08)
    return fig


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(part for part in keep.split("-") if part)[:40] or "axis"


def write_slide_set(run_dir: str | Path, out_dir: str | Path,
                    config: SlideConfig = SlideConfig()) -> list[Path]:
    """Write every figure of the slide set into ``out_dir``; returns the files written."""
    from drlcore.data import rundir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    objects = _objects(run_dir)
    stamp = figure_stamp(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    zcols = rundir.latent_columns(objects)
    names = _axis_names(run_dir, len(zcols))
    for j in range(len(zcols)):
        fig = axis_montage(run_dir, j, config)
        written += _save(fig, out_dir / f"axis-{j}-{_slug(names[j])}", stamp,
                         f"latent axis {_display(names[j], j)}", config.formats)
    if (run_dir / rundir.CORRELATIONS).is_file():
        try:
            fig = correlation_figure(run_dir, config)
        except DrlError:
            fig = None
        if fig is not None:
            written += _save(fig, out_dir / "correlations", stamp, "latent axes vs morphology",
                             config.formats)
    try:
        fig = axis_card_figure(run_dir, config)
    except DrlError:
        fig = None
    if fig is not None:
        written += _save(fig, out_dir / "axes-card", stamp, "axis card", config.formats)
    if any(c.endswith("_x") and c[:-2] in ("umap", "pca") for c in objects.columns):
        written += _save(map_figure(run_dir, "label", config), out_dir / "class-map", stamp,
                         "class map", config.formats)
        if "anomaly_score" in objects:
            written += _save(map_figure(run_dir, "anomaly_score", config),
                             out_dir / "anomaly-map", stamp, "anomaly map", config.formats)
    return written
