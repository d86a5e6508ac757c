"""Pure figure builders: tables in, ``plotly.graph_objects.Figure`` out.

No Streamlit here, so every builder is testable on its own and reusable in the HTML report.
Palettes are colour-blind safe: Okabe-Ito for classes, viridis/cividis for continuous values,
diverging RdBu for signed correlations. Fonts are sized for a projected slide (>= 14 px).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
# More classes than Okabe-Ito has colours (plankton has 15): the same hues again, with a different
# marker symbol so classes stay distinguishable without relying on colour alone.
_EXTRA_SYMBOLS = ("circle", "diamond", "square", "cross", "x", "triangle-up")
FONT_SIZE = 16
FONT_FAMILY = "Inter, 'Source Sans Pro', 'Helvetica Neue', Arial, sans-serif"
MISSING_LABEL = "(no label)"
# Scatter plots above this many points draw a seeded random sample (their statistics always use
# every object): a million Plotly points cost seconds of JSON per rerun and draw as one blot.
DISPLAY_MAX_POINTS = 20_000
_TRACE_TYPES = ("bar", "heatmap", "histogram", "scatter", "scattergl")


def _light_template() -> go.layout.Template:
    """plotly_white with only the trace defaults this module draws: assigning the full template
    deep-copies defaults for two dozen trace types (about 20 ms per figure, several figures a
    page, every rerun); this one costs a third of that and looks the same."""
    white = pio.templates["plotly_white"]
    data = {k: v for k, v in white.data.to_plotly_json().items() if k in _TRACE_TYPES}
    return go.layout.Template(layout=white.layout, data=data)


_TEMPLATE = _light_template()

__all__ = [
    "OKABE_ITO", "FONT_SIZE", "plot_config", "style", "class_colours", "feature_label",
    "correlation_heatmap", "heatmap_order", "pair_scatter", "latent_map", "anomaly_histogram", "effect_size_chart",
    "group_effect_chart", "metric_bars", "factor_heatmap", "empty_figure", "display_positions", "display_sample",
    "DISPLAY_MAX_POINTS", "heatmap_features", "correlated_features", "FAMILY_TITLES",
    "axis_card_chart",
]


def plot_config(image_format: str = "svg", filename: str = "drl-chart") -> dict:
    """Plotly config: the modebar camera saves SVG or PNG in the browser (no server, no kaleido)."""
    if image_format not in ("svg", "png"):
        raise ValueError(f"image_format must be 'svg' or 'png', got {image_format!r}")
    return {
        "displaylogo": False,
        "scrollZoom": True,
        "modeBarButtonsToRemove": ["autoScale2d", "toggleSpikelines"],
        "toImageButtonOptions": {"format": image_format, "filename": filename,
                                 "scale": 1 if image_format == "svg" else 3},
    }


def style(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(
        template=_TEMPLATE,
        font={"family": FONT_FAMILY, "size": FONT_SIZE, "color": "#1f2933"},
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": FONT_SIZE + 4}} if title else None,
        margin={"l": 60, "r": 20, "t": 60 if title else 20, "b": 50},
        hoverlabel={"font": {"size": FONT_SIZE - 1}},
        legend={"font": {"size": FONT_SIZE - 1}, "itemsizing": "constant"},
    )
    if height:
        fig.update_layout(height=height)
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": FONT_SIZE + 2}, x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, height=300)


def feature_label(column: str) -> str:
    """``morph_intensity_mean`` -> ``intensity mean`` (axis labels a biologist reads)."""
    name = column.removeprefix("morph_")
    return name.replace("_", " ")


# How a family reads above its columns (the family keys are drlcore.analysis.naming's).
FAMILY_TITLES = {"dna": "DNA content"}

# Per-channel measures the heatmap shows by default: one amount, one level and one texture per
# channel, DNA content per compartment. The full CellProfiler-style set (10 measures x 3
# compartments x channels) stays in objects.parquet, the feature picker and the toggle.
_COMPACT_MEASURES = ("cell_integrated", "cell_mean", "cell_glcm_contrast")


def heatmap_features(features: Sequence[str], every: bool = False) -> list[str]:
    """The columns the correlation heatmap shows: all of them with ``every``, else the
    object-level columns, the nucleus and cytoplasm masks' size and shape, and per channel the
    compact measures above (frame backgrounds and the older per-channel means left out)."""
    from drlcore.analysis.naming import feature_channel, feature_family

    if every:
        return list(features)
    out = []
    for f in features:
        if f.endswith("_background") or re.match(r"morph_ch\d+(_.+)?_mean$", f):
            continue
        channel = feature_channel(f)
        if (channel is not None and not f.endswith(tuple("_" + m for m in _COMPACT_MEASURES))
                and feature_family(f) != "dna"):
            continue
        out.append(f)
    return out


def class_colours(classes: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Class -> (colour, marker symbol); stable for a sorted class list."""
    out = {}
    for i, cls in enumerate(classes):
        out[cls] = (OKABE_ITO[i % len(OKABE_ITO)], _EXTRA_SYMBOLS[(i // len(OKABE_ITO)) % len(_EXTRA_SYMBOLS)])
    return out


def _leaf_order(block: np.ndarray) -> list[int]:
    """Row order of ``block`` by average-linkage hierarchical clustering (scipy); NaN read as 0."""
    if len(block) < 3:
        return list(range(len(block)))
    from scipy.cluster import hierarchy

    data = np.nan_to_num(np.asarray(block, dtype=float))
    return [int(i) for i in hierarchy.leaves_list(hierarchy.linkage(data, method="average",
                                                                    metric="euclidean"))]


def heatmap_order(grid: pd.DataFrame, axes: Sequence[dict] | None = None, grouped: bool = True,
                  cluster: bool = False) -> tuple[list, list, list[tuple[str, int, int]]]:
    """(row order, column order, family spans) for a dims x features grid.

    Grouped: features by family (size, shape, colour, intensity, texture, then others), each span
    ``(family, first, last)`` a run of columns; rows by their best family (a named axis's family
    from ``axes``, else the family of its strongest |value|), strongest first, unnamed and
    inactive axes last. Cluster: rows and the features within each family in the leaf order of a
    hierarchical clustering of their profiles instead.
    """
    from drlcore.analysis.naming import FAMILIES, feature_family

    order = list(FAMILIES) + ["other"]
    columns = list(grid.columns)
    fam_of = {c: feature_family(c) or "other" for c in columns}
    if grouped:
        columns = sorted(columns, key=lambda c: (order.index(fam_of[c]), c))
    if cluster and grouped:
        regrouped = []
        for fam in order:
            block = [c for c in columns if fam_of[c] == fam]
            if block:
                regrouped += [block[i] for i in _leaf_order(grid[block].to_numpy(float).T)]
        columns = regrouped
    elif cluster:
        columns = [columns[i] for i in _leaf_order(grid[columns].to_numpy(float).T)]
    spans: list[tuple[str, int, int]] = []
    if grouped:
        for i, c in enumerate(columns):
            if spans and spans[-1][0] == fam_of[c]:
                spans[-1] = (fam_of[c], spans[-1][1], i)
            else:
                spans.append((fam_of[c], i, i))

    rows = list(grid.index)
    if cluster:
        rows = [rows[i] for i in _leaf_order(grid.loc[rows, columns].to_numpy(float))]
    elif grouped:
        by_dim = {int(a["dim"]): a for a in (axes or [])}

        def key(d):
            values = grid.loc[d].abs()
            a = by_dim.get(int(d))
            if a is not None and a.get("status") == "named" and a.get("family") in order:
                return (0, order.index(a["family"]), -abs(a.get("r") or 0.0), int(d))
            if a is not None and a.get("status") in ("unnamed", "inactive"):
                return (1 if a["status"] == "unnamed" else 2, 0, -float(values.max(skipna=True) or 0), int(d))
            if values.notna().any():
                best = values.idxmax()
                return (0, order.index(fam_of[best]), -float(values[best]), int(d))
            return (2, 0, 0.0, int(d))
        rows = sorted(rows, key=key)
    return rows, columns, spans


def correlation_heatmap(corr: pd.DataFrame, method: str, dim_labels: Sequence[str] | None = None,
                        features: Sequence[str] | None = None, axes: Sequence[dict] | None = None,
                        grouped: bool = True, cluster: bool = False) -> go.Figure:
    """Latent dims (rows) x morphology features (columns) from the long correlations table.

    ``grouped`` (default) puts features in families with the family named above its columns and
    orders rows by their best family (``axes``: the naming records of analysis.json);
    ``cluster`` orders rows and features within families by hierarchical clustering.
    """
    sub = corr[corr["method"] == method]
    if sub.empty:
        return empty_figure(f"No {method} correlations in this run")
    grid = sub.pivot_table(index="dim", columns="feature", values="value", aggfunc="first")
    if features is not None:
        grid = grid.reindex(columns=[f for f in features if f in grid.columns])
    grid = grid.sort_index()
    row_order, col_order, spans = heatmap_order(grid, axes, grouped=grouped, cluster=cluster)
    grid = grid.loc[row_order, col_order]
    dims = grid.index.to_numpy()
    if dim_labels is not None:
        y_labels = [dim_labels[d] if d < len(dim_labels) else f"z{d}" for d in dims]
    else:
        y_labels = [f"z{d}" for d in dims]
    x_labels = [feature_label(c) for c in grid.columns]
    signed = method in ("pearson", "spearman")
    z = grid.to_numpy(dtype=float)
    custom = np.dstack(np.meshgrid(list(grid.columns), dims.astype(str)))  # (dims, features, 2)
    symbol = {"pearson": "r", "spearman": "ρ"}.get(method, "MI")
    heat = go.Heatmap(
        z=z, x=x_labels, y=y_labels, customdata=custom,
        colorscale="RdBu_r" if signed else "Viridis",
        zmin=-1 if signed else 0, zmax=1 if signed else max(float(np.nanmax(z)) if np.isfinite(z).any() else 1, 1e-9),
        zmid=0 if signed else None,
        texttemplate="%{z:.2f}", textfont={"size": FONT_SIZE - 2},
        colorbar={"title": {"text": symbol}}, hoverinfo="skip", xgap=2, ygap=2,
    )
    # Plotly heatmaps emit no selection events, so an invisible marker sits on each cell centre:
    # clicking a cell selects its marker, whose customdata names the (feature, dim) pair.
    xx, yy = np.meshgrid(x_labels, y_labels)
    cells = go.Scatter(
        x=xx.ravel(), y=yy.ravel(), mode="markers", customdata=custom.reshape(-1, 2),
        text=[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in z.ravel()],
        marker={"size": 36, "opacity": 0, "color": "#000000"},
        selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}},
        hovertemplate="%{y}<br>%{x}<br>" + symbol + " = %{text}<extra>click for the scatter</extra>",
        showlegend=False,
    )
    fig = go.Figure([heat, cells])
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-30, categoryorder="array", categoryarray=x_labels)
    fig.update_layout(hoverdistance=-1, clickmode="event+select", dragmode=False)
    # Family labels above their columns, a white rule between families.
    for fam, first, last in spans:
        fig.add_annotation(text=f"<b>{FAMILY_TITLES.get(fam, fam)}</b>", x=(first + last) / 2,
                           xref="x", y=1.0,
                           yref="paper", yanchor="bottom", showarrow=False,
                           font={"size": FONT_SIZE - 1})
        if first > 0:
            fig.add_shape(type="line", x0=first - 0.5, x1=first - 0.5, xref="x", y0=0, y1=1,
                          yref="paper", line={"color": "white", "width": 4})
    fig = style(fig, height=max(320, 90 + 42 * len(dims)))
    if spans:
        fig.update_layout(margin={"t": max(fig.layout.margin.t or 20, 50)})
    return fig


def display_positions(n: int, max_points: int = DISPLAY_MAX_POINTS, keep: np.ndarray | None = None,
                      seed: int = 0, where: np.ndarray | None = None) -> np.ndarray:
    """Ascending positions of the ``n`` rows to draw: all of them (those where the boolean
    ``where`` holds, if given) up to ``max_points``, else a seeded random sample of that many
    plus every position in ``keep`` (a boolean mask or positions; within ``where``). The same
    ``n`` and seed give the same sample on every rerun."""
    candidates = np.arange(n) if where is None else np.flatnonzero(where)
    if len(candidates) <= max_points:
        return candidates
    take = np.zeros(n, bool)
    take[np.random.default_rng(seed).choice(candidates, size=max_points, replace=False)] = True
    if keep is not None:
        kept = np.zeros(n, bool)
        kept[keep] = True
        take |= kept if where is None else kept & where
    return np.flatnonzero(take)


def display_sample(df: pd.DataFrame, max_points: int = DISPLAY_MAX_POINTS,
                   keep_rows: Sequence[int] | None = None, seed: int = 0,
                   where: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`display_positions` of ``df``, keeping the objects whose ``row`` is in
    ``keep_rows`` (a selection stays visible), in table order; only the drawn rows are copied."""
    keep = df["row"].isin(list(keep_rows)).to_numpy() if keep_rows else None
    positions = display_positions(len(df), max_points, keep, seed, where)
    return df if where is None and len(positions) == len(df) else df.iloc[positions]


def pair_scatter(df: pd.DataFrame, x_col: str, y_col: str, x_label: str, y_label: str,
                 colour_col: str | None = "label", selected_rows: Sequence[int] | None = None,
                 max_points: int = DISPLAY_MAX_POINTS) -> go.Figure:
    """One latent dim against one morphology feature; point customdata carries the object row.
    Above ``max_points`` objects with both values it draws :func:`display_sample` of them and
    says so in the title."""
    ok = df[[x_col, y_col]].notna().all(axis=1).to_numpy()
    n_valid = int(ok.sum())
    data = display_sample(df, max_points, keep_rows=selected_rows, where=ok)
    fig = go.Figure()
    groups = _groups(data, colour_col)
    colours = class_colours([g for g, _ in groups])
    for name, part in groups:
        colour, symbol = colours[name]
        fig.add_trace(go.Scattergl(
            x=part[x_col], y=part[y_col], mode="markers", name=str(name),
            marker={"color": colour, "symbol": symbol, "size": 7, "opacity": 0.75,
                    "line": {"width": 0.5, "color": "white"}},
            customdata=_map_customdata(part),
            hovertemplate="<b>%{customdata[1]}</b><br>" + x_label + " = %{x:.3f}<br>" + y_label
                          + " = %{y:.3f}<extra>%{fullData.name}</extra>",
            selectedpoints=_selected_positions(part, selected_rows),
            selected={"marker": {"opacity": 1.0}}, unselected={"marker": {"opacity": 0.25}},
        ))
    fig.update_xaxes(title=x_label)
    fig.update_yaxes(title=y_label)
    fig.update_layout(dragmode="lasso", uirevision=f"{x_col}|{y_col}", showlegend=len(groups) > 1)
    title = (f"Seeded random sample of {len(data):,} of {n_valid:,} objects"
             if len(data) < n_valid else None)
    return style(fig, title=title, height=480 if title is None else 520)


def latent_map(df: pd.DataFrame, x_col: str, y_col: str, colour_col: str | None, continuous: bool,
               colour_title: str | None = None, highlight: np.ndarray | None = None,
               selected_rows: Sequence[int] | None = None, background: pd.DataFrame | None = None,
               background_name: str = "reference", point_size: float | None = None) -> go.Figure:
    """UMAP/PCA scatter in WebGL (``Scattergl``), so 100k points still draw.

    Hover shows name, class and the colouring value (plotly hover labels cannot show images;
    the app shows the image of a clicked or selected point beside the map). ``highlight`` rings
    flagged objects (anomalies); ``background`` draws a second run's coordinates in grey beneath.
    """
    n = len(df)
    size = point_size or float(np.clip(9 - 1.2 * np.log10(max(n, 1)), 3, 8))
    fig = go.Figure()
    if background is not None and len(background):
        fig.add_trace(go.Scattergl(
            x=background[x_col], y=background[y_col], mode="markers", name=background_name,
            marker={"color": "#b8bec6", "size": size, "opacity": 0.5}, hoverinfo="skip",
        ))
    # customdata carries only (row, path): the class comes from the trace name and a continuous
    # value from the marker colour, which keeps the browser payload small for 100k points.
    template = "<b>%{customdata[1]}</b><br>class: %{fullData.name}<extra></extra>"
    value_template = ("<b>%{customdata[1]}</b><br>" + (colour_title or str(colour_col))
                      + " = %{marker.color:.3g}<extra></extra>")
    if colour_col is None or not continuous:
        groups = _groups(df, colour_col)
        colours = class_colours([g for g, _ in groups])
        for name, part in groups:
            colour, symbol = colours[name]
            fig.add_trace(go.Scattergl(
                x=part[x_col], y=part[y_col], mode="markers", name=str(name),
                marker={"color": colour, "symbol": symbol, "size": size, "opacity": 0.8},
                customdata=_map_customdata(part), hovertemplate=template,
                selectedpoints=_selected_positions(part, selected_rows),
                unselected={"marker": {"opacity": 0.15}},
            ))
    else:
        values = pd.to_numeric(df[colour_col], errors="coerce")
        scale = "Cividis" if colour_col.startswith("anomaly") else "Viridis"
        fig.add_trace(go.Scattergl(
            x=df[x_col], y=df[y_col], mode="markers", name=colour_title or colour_col,
            marker={"color": values, "colorscale": scale, "size": size, "opacity": 0.85,
                    "colorbar": {"title": {"text": colour_title or colour_col, "side": "right"}},
                    "showscale": True},
            customdata=_map_customdata(df), hovertemplate=value_template,
            selectedpoints=_selected_positions(df, selected_rows),
            unselected={"marker": {"opacity": 0.15}}, showlegend=False,
        ))
    if highlight is not None and np.any(highlight):
        flagged = df[np.asarray(highlight, dtype=bool)]
        fig.add_trace(go.Scattergl(
            x=flagged[x_col], y=flagged[y_col], mode="markers", name="flagged as anomalous",
            # WebGL draws open symbols in the marker colour: a vermillion ring around the point.
            marker={"color": "#D55E00", "size": size + 8, "line": {"color": "#D55E00", "width": 2},
                    "symbol": "circle-open"},
            customdata=_map_customdata(flagged),
            hovertemplate="<b>%{customdata[1]}</b><br>flagged as anomalous<extra></extra>",
        ))
    axis = "UMAP" if x_col.startswith("umap") else ("PC" if x_col.startswith("pca") else x_col)
    fig.update_xaxes(title=f"{axis} 1", showticklabels=False, zeroline=False)
    fig.update_yaxes(title=f"{axis} 2", showticklabels=False, zeroline=False, scaleanchor="x", scaleratio=1)
    # uirevision keeps zoom and selection across reruns as long as the axes stay the same.
    fig.update_layout(dragmode="lasso", uirevision=f"{x_col}|{y_col}", legend={"itemsizing": "constant"})
    return style(fig, height=620)


def anomaly_histogram(scores: np.ndarray, known: np.ndarray | None, threshold: float | None,
                      score_label: str = "anomaly score", n_bins: int = 50) -> go.Figure:
    """Score distribution, split into known-class objects and the rest when labels exist.

    Binned here (``n_bins`` equal bins over the finite scores) and drawn as bars, so the figure
    carries 50 counts, not one value per object: the same picture at 10^6 objects."""
    scores = np.asarray(scores, dtype=float)
    fig = go.Figure()
    finite = np.isfinite(scores)
    lo = float(scores[finite].min()) if finite.any() else 0.0
    hi = float(scores[finite].max()) if finite.any() else 1.0
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, n_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])

    def bars(values: np.ndarray, name: str, colour: str, opacity: float = 1.0) -> go.Bar:
        counts, _ = np.histogram(values[np.isfinite(values)], bins=edges)
        return go.Bar(x=centres, y=counts, width=width, name=name, marker_color=colour,
                      marker_line_width=0, opacity=opacity,
                      customdata=np.column_stack([edges[:-1], edges[1:]]),
                      hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}: %{y:,} objects"
                                    "<extra>%{fullData.name}</extra>")

    if known is None:
        fig.add_trace(bars(scores, "all objects", OKABE_ITO[4]))
    else:
        known = np.asarray(known, dtype=bool)
        fig.add_trace(bars(scores[known], "known classes", OKABE_ITO[4], 0.75))
        fig.add_trace(bars(scores[~known], "other classes", OKABE_ITO[5], 0.75))
    fig.update_layout(barmode="overlay", bargap=0)
    if threshold is not None and np.isfinite(threshold):
        fig.add_vline(x=threshold, line={"color": "#1f2933", "dash": "dash", "width": 2},
                      annotation_text="flag threshold", annotation_position="top right")
    fig.update_xaxes(title=score_label)
    fig.update_yaxes(title="objects")
    return style(fig, height=360)


def effect_size_chart(effects: pd.DataFrame, labels: dict[str, str] | None = None, top: int = 15) -> go.Figure:
    """Horizontal bars of Cohen's d (selection minus rest), largest |d| on top."""
    data = effects.dropna(subset=["cohens_d"]).head(top).iloc[::-1]
    if data.empty:
        return empty_figure("Select at least two objects (and leave two out) to compare")
    names = [(labels or {}).get(c, feature_label(c)) for c in data["column"]]
    colours = np.where(data["cohens_d"] >= 0, "#D55E00", "#0072B2")
    fig = go.Figure(go.Bar(
        x=data["cohens_d"], y=names, orientation="h", marker_color=colours,
        customdata=np.column_stack([data["mean_selected"], data["mean_rest"]]),
        hovertemplate="%{y}<br>Cohen's d = %{x:.2f}<br>mean selected %{customdata[0]:.3g}"
                      " vs rest %{customdata[1]:.3g}<extra></extra>",
    ))
    fig.add_vline(x=0, line={"color": "#52606d", "width": 1})
    fig.update_xaxes(title="Cohen's d (selection − rest)")
    return style(fig, height=max(300, 40 + 30 * len(data)))


def group_effect_chart(table: pd.DataFrame, labels: dict[str, str] | None = None, top: int = 15,
                       names: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Hedges' g (group A minus group B) with its confidence interval, largest |g| on top.

    ``table`` is ``drlcore.analysis.compare.compare_groups``' output (sorted by |g|); a bar is vermillion
    where A is higher, blue where B is, and hollow where BH q >= 0.05."""
    data = table.dropna(subset=["hedges_g"]).head(top).iloc[::-1]
    if data.empty:
        return empty_figure("Each group needs at least two objects with a measured value")
    a, b = names
    shown = [(labels or {}).get(c, feature_label(c)) for c in data["column"]]
    colours = np.where(data["hedges_g"] >= 0, "#D55E00", "#0072B2")
    significant = data["q_value"].fillna(1.0).to_numpy() < 0.05
    fig = go.Figure(go.Bar(
        x=data["hedges_g"], y=shown, orientation="h",
        marker={"color": np.where(significant, colours, "rgba(0,0,0,0)"),
                "line": {"color": colours, "width": 2}},
        error_x={"type": "data", "symmetric": False, "color": "#52606d", "thickness": 1.5,
                 "array": (data["ci_high"] - data["hedges_g"]).to_numpy(),
                 "arrayminus": (data["hedges_g"] - data["ci_low"]).to_numpy()},
        customdata=np.column_stack([data["mean_a"], data["mean_b"], data["ci_low"], data["ci_high"],
                                    data["q_value"]]),
        hovertemplate="%{y}<br>Hedges' g = %{x:.2f} (95% CI %{customdata[2]:.2f} to %{customdata[3]:.2f})"
                      f"<br>mean {a} %{{customdata[0]:.3g}} vs {b} %{{customdata[1]:.3g}}"
                      "<br>q = %{customdata[4]:.2g}<extra></extra>",
    ))
    fig.add_vline(x=0, line={"color": "#52606d", "width": 1})
    fig.update_xaxes(title=f"Hedges' g ({a} − {b}); filled: BH q < 0.05")
    return style(fig, height=max(300, 40 + 30 * len(data)))


def metric_bars(scores: dict[str, float]) -> go.Figure:
    """Disentanglement scores (0..1) side by side."""
    names = list(scores)
    values = [scores[k] for k in names]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=OKABE_ITO[4],
                           text=[f"{v:.2f}" for v in values], textposition="outside",
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_yaxes(range=[0, 1.1], title="score (higher is better)")
    return style(fig, height=360)


def factor_heatmap(matrix: np.ndarray, dim_labels: Sequence[str], factor_names: Sequence[str],
                   value_name: str = "importance") -> go.Figure:
    """Latent dimension x ground-truth factor matrix (e.g. DCI importance)."""
    matrix = np.asarray(matrix, dtype=float)
    fig = go.Figure(go.Heatmap(
        z=matrix, x=list(factor_names), y=list(dim_labels), colorscale="Viridis", zmin=0,
        texttemplate="%{z:.2f}", textfont={"size": FONT_SIZE - 2}, xgap=2, ygap=2,
        colorbar={"title": {"text": value_name}},
        hovertemplate="%{y} · %{x}<br>" + value_name + " = %{z:.3f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    return style(fig, height=max(320, 60 + 40 * len(dim_labels)))


def _groups(df: pd.DataFrame, colour_col: str | None) -> list[tuple[str, pd.DataFrame]]:
    if colour_col is None or colour_col not in df.columns:
        return [("objects", df)]
    keys = df[colour_col].astype("string").fillna(MISSING_LABEL)
    return [(str(k), part) for k, part in df.groupby(keys, sort=True, observed=True)]


def _map_customdata(part: pd.DataFrame) -> np.ndarray:
    return np.column_stack([part["row"].to_numpy(), part["path"].astype(str).to_numpy()])


def _selected_positions(part: pd.DataFrame, selected_rows: Sequence[int] | None) -> list[int] | None:
    if not selected_rows:
        return None
    return np.flatnonzero(part["row"].isin(selected_rows).to_numpy()).tolist()


# --------------------------------------------------------------------------- a run's figures
#
# What a page passes to the builders above, decided once here, so the app's pages and the
# notebook API (drlcore.runs.api.Run.figure) draw the same figure from the same run.


def correlated_features(corr: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The morphology features a run's correlations table covers that are present in the objects
    table (``columns``), sorted: what the heatmap may show (:func:`heatmap_features` picks)."""
    present = set(columns)
    return sorted(f for f in corr["feature"].unique() if f in present)


def run_heatmap(corr: pd.DataFrame, columns: Sequence[str], dim_labels: Sequence[str],
                axes: Sequence[dict] | None, method: str = "pearson",
                cluster: bool = False, every: bool = False) -> go.Figure:
    """The Correlations page's heatmap of a run (its correlations table, objects columns, axis
    names and naming records); ``every`` adds every per-channel measurement."""
    shown = heatmap_features(correlated_features(corr, columns), every=every)
    return correlation_heatmap(corr, method, dim_labels, shown, axes=axes or [], cluster=cluster)


def map_colour_choices(columns: Sequence[str], latent_columns: Sequence[str],
                       dim_labels: Sequence[str], morph_columns: Sequence[str],
                       has_labels: bool) -> dict[str, str]:
    """What the class map can be coloured by: option -> its title (``class``, the anomaly score,
    each latent axis, each morphology feature; ``none`` when nothing else)."""
    choices = {"class": "Class"} if has_labels else {}
    if "anomaly_score" in columns:
        choices["anomaly_score"] = "Anomaly score"
    choices.update({c: f"Latent · {n}" for c, n in zip(latent_columns, dim_labels, strict=False)})
    choices.update({c: f"Morphology · {feature_label(c)}" for c in morph_columns})
    return choices or {"none": "None"}


def map_colour_column(choice: str) -> tuple[str | None, bool]:
    """A colour choice of :func:`map_colour_choices` -> (objects column, continuous?)."""
    column = None if choice == "none" else ("label" if choice == "class" else choice)
    return column, column not in (None, "label")


def measure_labels(latent_columns: Sequence[str], dim_labels: Sequence[str],
                   morph_columns: Sequence[str]) -> dict[str, str]:
    """Display names of the measures two groups are compared on (latent axes, morphology)."""
    return {**dict(zip(latent_columns, dim_labels, strict=False)),
            **{c: feature_label(c) for c in morph_columns}}


def anomaly_map(df: pd.DataFrame, projection: str, values: np.ndarray, flagged: np.ndarray,
                labelled: bool) -> tuple[go.Figure, int, int]:
    """The map with flagged objects ringed; above DISPLAY_MAX_POINTS objects a seeded sample as
    background plus the most anomalous flagged objects (up to a fifth of the points).
    Returns (figure, objects drawn, flagged objects drawn)."""
    p = projection
    on_map, ringed = df, flagged
    if len(df) > DISPLAY_MAX_POINTS:
        flagged_idx = np.flatnonzero(flagged)
        most_anomalous = flagged_idx[np.argsort(-values[flagged_idx])][:DISPLAY_MAX_POINTS // 5]
        picked = display_positions(len(df), keep=most_anomalous)
        needed = [c for c in ("row", "path", "label", f"{p}_x", f"{p}_y") if c in df]
        on_map = pd.DataFrame({c: df[c].to_numpy()[picked] for c in needed})
        ringed = flagged[picked]
    fig = latent_map(on_map, f"{p}_x", f"{p}_y", "label" if labelled else None, False, highlight=ringed)
    return fig, len(on_map), int(ringed.sum())


def traversal_captions(dim_label: str, values: Sequence[float]) -> list[str]:
    """Captions of a traversal strip's images: the axis and its value at each step."""
    return [f"{dim_label.split(':')[0]} = {v:+.2f}" for v in values]


def traversal_strip(images: Sequence[bytes | None], captions: Sequence[str],
                    title: str | None = None) -> go.Figure:
    """The images along one latent axis, low to high, side by side with their captions.

    ``images`` are encoded images (the run's JPEG thumbnails), embedded as data URIs: Plotly
    shows them as they are, without decoding them here."""
    import base64

    from plotly.subplots import make_subplots

    n = max(len(images), 1)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(captions) or None,
                        horizontal_spacing=0.01)
    for k, data in enumerate(images, start=1):
        if not data:
            continue
        kind = "png" if data[:4] == b"\x89PNG" else "jpeg"
        uri = f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")
        fig.add_trace(go.Image(source=uri, hoverinfo="skip"), row=1, col=k)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    for note in fig.layout.annotations:
        note.font = {"size": FONT_SIZE - 3}
    return style(fig, title=title, height=260)


def axis_card_chart(card: Sequence[dict], top: int | None = None) -> go.Figure:
    """The axis card: one row per axis (anchored first, then the strongest free ones), its
    |Spearman rho| with the measure it is judged on and the 95% CI, next to the best single PCA
    axis of the raw features and the ridge ceiling for the same measure."""
    from drlcore.analysis.axis_card import card_label, card_order

    rows = [r for r in card_order(card) if r.get("rho") is not None]
    if top is not None:
        rows = rows[:top]
    if not rows:
        return empty_figure("no axis has a measure to be judged on in this run")
    labels = [card_label(r) for r in rows]
    rho = np.array([abs(r["rho"]) for r in rows])
    lo = np.array([min(abs(r["ci_low"]), abs(r["ci_high"])) if r.get("ci_low") is not None
                   and np.sign(r["ci_low"]) == np.sign(r["ci_high"]) else 0.0 for r in rows])
    hi = np.array([max(abs(r["ci_low"]), abs(r["ci_high"])) if r.get("ci_high") is not None
                   else a for r, a in zip(rows, rho, strict=True)])
    pca = [r.get("pca_rho") for r in rows]
    ceiling = [r.get("ceiling_rho") for r in rows]
    colours = [OKABE_ITO[4] if r.get("kind") == "anchored" else OKABE_ITO[1] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=labels, x=[c if c is not None else 0 for c in ceiling],
                         orientation="h", name="ceiling (ridge on raw features)",
                         marker_color="rgba(0,0,0,0.08)", hovertemplate="ceiling %{x:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(y=labels, x=pca, mode="markers", name="best PCA axis",
                             marker=dict(symbol="square-open", size=12, color=OKABE_ITO[5]),
                             hovertemplate="best PCA axis |ρ| %{x:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        y=labels, x=rho, mode="markers", name="this axis, |Spearman ρ| with 95% CI",
        marker=dict(size=12, color=colours),
        error_x=dict(type="data", symmetric=False, array=np.clip(hi - rho, 0, None),
                     arrayminus=np.clip(rho - lo, 0, None), color="#444"),
        customdata=[[r.get("rows", ""), r.get("n", 0)] for r in rows],
        hovertemplate="|ρ| %{x:.2f} on %{customdata[0]} (n %{customdata[1]})<extra></extra>"))
    fig.update_yaxes(autorange="reversed", automargin=True)
    # No axis title: the legend below the ticks names what x is (a title there collided with it).
    fig.update_xaxes(range=[0, 1.02])
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", y=-0.12, yanchor="top"))
    return style(fig, "Axis card: each axis vs the best PCA axis and the ceiling",
                 height=max(320, 34 * len(rows) + 160))
