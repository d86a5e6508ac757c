"""The Python API: open a run in a notebook, or make one, with the app's tables and figures.

::

    import drlcore as drl

    run = drl.open_run("runs/blood")       # nothing is read yet
    run                                    # a few lines: what the run holds
    run.objects                            # one row per object (pandas), read once and kept
    run.axes                               # each latent axis: its name and the evidence for it
    run.figure("heatmap")                  # the Plotly figure the explorer draws
    run.figure("groups", a="lymphocyte", b="neutrophil")

    run = drl.run("images/", "runs/new", backbone="effnet-lite0", anchor="area")

Tables and JSON files are read through :mod:`drlcore.data.rundir` (the one owner of the run
folder) on first access and kept. Figures are drawn by the explorer's own pure builders
(``explorer.figures``), imported only when a figure is asked for, so ``import drlcore`` stays
free of Plotly and a notebook figure is the app's figure. Errors are :class:`DrlError` with the
same words the command line prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from drlcore.data import rundir
from drlcore.errors import DrlError

__all__ = ["Run", "Analysis", "open_run", "run", "FIGURES"]

# run.figure(name): the explorer's figures, by the page that draws them.
FIGURES = {
    "heatmap": "Correlations: latent axes x morphology features",
    "traversal": "Latent axes: the objects along one axis, low to high",
    "class map": "Class map: UMAP/PCA of the latent space, coloured by class or a measure",
    "anomaly map": "Anomalies: the map with the flagged objects ringed",
    "anomaly histogram": "Anomalies: the score distribution, known classes vs the rest",
    "groups": "Class map, group A vs group B: Hedges' g per measure",
}
_ALIASES = {"correlations": "heatmap", "map": "class map", "compare": "groups", "a vs b": "groups",
            "anomalies": "anomaly map", "strip": "traversal"}


@dataclass(frozen=True)
class Analysis:
    """What ``drl analyze`` recorded in ``analysis.json``, typed; ``raw`` keeps the whole file."""

    summary: dict = field(repr=False)  # headline lines, best correlations, notes
    config: dict  # the analysis settings (known classes, seed, ...)
    dim_names: list[str]
    projections: dict = field(repr=False)  # per map: trustworthiness
    anomaly: dict = field(repr=False)  # open-set evaluation, known classes
    classification: dict = field(repr=False)  # cross-validated accuracy, latent vs raw features
    notes: list[str]
    raw: dict = field(repr=False)

    @classmethod
    def from_dict(cls, raw: dict) -> Analysis:
        def part(key: str) -> dict:
            value = raw.get(key)
            return dict(value) if isinstance(value, dict) else {}

        summary = part("summary")
        notes = summary.get("notes") or raw.get("notes") or []
        return cls(summary=summary, config=part("config"),
                   dim_names=[str(n) for n in raw.get("dim_names") or []],
                   projections=part("projections"), anomaly=part("anomaly"),
                   classification=part("classification"), notes=[str(n) for n in notes], raw=raw)

    @property
    def headline(self) -> list[str]:
        return [str(line) for line in self.summary.get("headline") or []]


def _thumb_image(data: bytes | None):
    if data is None:
        return None
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


class Run:
    """One run folder, opened read-only. Tables load on first access and are kept."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise DrlError(f"no run folder at {self.path}")
        if not rundir.is_run_dir(self.path):
            raise DrlError(f"{self.path} is not a drl run folder (it has no {rundir.MANIFEST}); "
                           f"make one with `drl run DATA --out {self.path}` or drl.run(...)")

    @property
    def name(self) -> str:
        return self.path.name

    def __repr__(self) -> str:
        lines = [f"drl run {self.name!r} at {self.path}"]
        if not (self.path / rundir.OBJECTS).is_file():
            return "\n".join([*lines, "  not encoded yet (no objects table)"])
        objects = self.objects
        classes = f", {len(self.classes)} classes" if self.classes else ", unlabelled"
        lines.append(f"  {len(objects):,} objects{classes}; {len(self.latent_columns)} latent "
                     f"axes, {len(self.morph_columns)} morphology features")
        axes = self.axes
        if len(axes):
            named = axes[axes["status"] == "named"]["name"].tolist()
            lines.append(f"  named axes: {', '.join(named) if named else 'none'}")
        info = rundir.features_info(self.manifest)
        if info is not None:
            lines.append(f"  backbone {info.backbone}; maps: {', '.join(self.projections) or 'none'}")
        lines.append(f"  figures: {', '.join(FIGURES)}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ tables and records

    @cached_property
    def manifest(self) -> dict:
        """The manifest in its current layout (``{"schema_version", "stages"}``)."""
        return rundir.read_manifest(self.path)

    @cached_property
    def objects(self):
        """One row per object: path, label, latents (``z_mean_<j>``), morphology (``morph_*``),
        map coordinates, anomaly scores. ``row`` numbers the objects as the app does."""
        path = self.path / rundir.OBJECTS
        if not path.is_file():
            raise DrlError(f"{self.path} has no {rundir.OBJECTS}; it is not a finished run "
                           f"(rerun `drl run` on it)")
        # Checked against the manifest's record like every other reader: a damaged table is
        # an error naming the file, the stage and the rerun, never different numbers.
        table = rundir.read_table(self.path, rundir.OBJECTS, self.manifest)
        if "row" not in table.columns:
            table = table.assign(row=np.arange(len(table)))
        return table

    @cached_property
    def correlations(self):
        """Latent axes x morphology features, long format (None when not analysed)."""
        path = self.path / rundir.CORRELATIONS
        return rundir.read_table(self.path, rundir.CORRELATIONS, self.manifest) if path.is_file() else None

    @cached_property
    def latent_columns(self) -> list[str]:
        return rundir.latent_columns(self.objects.columns)

    @cached_property
    def morph_columns(self) -> list[str]:
        return rundir.morph_columns(self.objects)

    @property
    def latents(self):
        """The latent means, one column per axis (``z_mean_<j>``), in object order."""
        return self.objects[self.latent_columns]

    @property
    def morphology(self):
        """The handcrafted morphology features (``morph_*``), in object order."""
        return self.objects[self.morph_columns]

    @cached_property
    def analysis(self) -> Analysis:
        return Analysis.from_dict(rundir.read_analysis(self.path))

    @cached_property
    def model_config(self) -> dict:
        return rundir.model_config(self.path)

    @cached_property
    def _axis_records(self) -> list[dict]:
        return rundir.axis_records(self.analysis.raw, len(self.latent_columns))

    @property
    def axes(self):
        """One row per latent axis: ``name``, ``status`` (named / unnamed / inactive), the family
        and feature it follows, ``r`` with its CI and BH ``q_value``, ``reason``, and the
        ``source_name`` it had on the synthetic source."""
        import pandas as pd

        return pd.DataFrame(self._axis_records)

    @cached_property
    def dim_names(self) -> list[str]:
        """Display names of the axes (``z3: size``), as the app shows them."""
        return rundir.display_dim_names(self.analysis.raw, self.model_config,
                                        len(self.latent_columns))

    @property
    def has_labels(self) -> bool:
        df = self.objects
        return "label" in df.columns and bool(df["label"].notna().any())

    @cached_property
    def classes(self) -> list[str]:
        import pandas as pd

        if not self.has_labels:
            return []
        labels = self.objects["label"]
        return sorted(str(v) for v in pd.unique(labels[labels.notna()].to_numpy(object)))

    @property
    def projections(self) -> list[str]:
        """The maps the analysis made (``umap``, ``pca``), first the one the app shows."""
        cols = set(self.objects.columns)
        return [p for p in ("umap", "pca") if {f"{p}_x", f"{p}_y"} <= cols]

    def provenance(self) -> dict:
        """What every export is stamped with: backbone, model, data, parameters."""
        return rundir.provenance(self.path, manifest=self.manifest, config=self.model_config,
                                 analysis=self.analysis.raw, n_objects=len(self.objects))

    # ------------------------------------------------------------------ images

    def _rows(self, ids) -> list[int]:
        """Table positions of ``ids``: ``row`` numbers (ints) or object paths (strings)."""
        df = self.objects
        ids = [ids] if isinstance(ids, (int, np.integer, str)) else list(ids)
        by_row = {int(r): i for i, r in enumerate(df["row"])}
        by_path = None
        out = []
        for key in ids:
            if isinstance(key, str):
                by_path = by_path or {str(p): i for i, p in enumerate(df["path"])}
                if key not in by_path:
                    raise DrlError(f"no object with path {key!r} in {self.name}")
                out.append(by_path[key])
            elif int(key) in by_row:
                out.append(by_row[int(key)])
            else:
                raise DrlError(f"no object with row {key!r} in {self.name} "
                               f"(rows 0-{len(df) - 1})")
        return out

    @cached_property
    def _thumbs(self) -> rundir.Thumbs:
        return rundir.open_thumbs(self.path)

    def thumbnail_bytes(self, ids) -> list[bytes | None]:
        """The stored JPEG thumbnails of ``ids`` (row numbers or paths); None where missing."""
        shas = self.objects["sha256"].to_numpy()
        return [self._thumbs.get(str(shas[i])) for i in self._rows(ids)]

    def thumbnails(self, ids) -> list:
        """The stored thumbnails of ``ids`` (row numbers or paths) as PIL images (None where
        the run has none): what the app's galleries show."""
        return [_thumb_image(b) for b in self.thumbnail_bytes(ids)]

    def images(self, ids) -> list[np.ndarray]:
        """The original images of ``ids`` (row numbers or paths), decoded as the pipeline
        decodes them (16-bit and multi-channel files to their RGB composite), as uint8 arrays.
        A file that is gone or unreadable is a DrlError naming it."""
        from drlcore.data.ingest import ImageRecord, IngestConfig, decode, read_bytes

        df = self.objects
        config = IngestConfig()
        out = []
        for i in self._rows(ids):
            obj = df.iloc[i]
            source = str(obj.get("source") or "")
            record = ImageRecord(path=str(obj["path"]), label=obj.get("label"),
                                 split=obj.get("split"), source=source)
            try:
                out.append(np.asarray(decode(read_bytes(record), config).rgb))
            except DrlError:
                raise
            except Exception as exc:  # a moved or damaged file: name it, point at the thumbnail
                raise DrlError(f"the original image of {obj['path']} cannot be read "
                               f"({type(exc).__name__}: {exc}); run.thumbnails() still has "
                               f"its thumbnail") from None
        return out

    # ------------------------------------------------------------------ analyses

    def traversal(self, dim: int = 0, n_steps: int = 9):
        """The objects nearest each step along axis ``dim`` (2nd to 98th percentile, the other
        axes at their median), as the Latent axes page picks them: a table with the step's
        ``value`` and its ``caption``, one row per step."""
        from drlcore.analysis.traversal import traversal_indices, traversal_values

        dim = self._dim(dim)
        z = self.objects[self.latent_columns].to_numpy(np.float64)
        rows = traversal_indices(z, dim, n_steps)
        values = traversal_values(z, dim, n_steps).tolist()
        picked = self.objects.iloc[rows].copy()
        picked.insert(0, "value", values)
        picked.insert(1, "caption", [f"{self.dim_names[dim].split(':')[0]} = {v:+.2f}"
                                     for v in values])
        return picked

    def group(self, spec) -> np.ndarray:
        """A boolean mask over the objects: a class name, a list of class names, or a mask."""
        df = self.objects
        if isinstance(spec, str) or (isinstance(spec, Sequence) and spec
                                     and all(isinstance(s, str) for s in spec)):
            names = [spec] if isinstance(spec, str) else list(spec)
            unknown = [n for n in names if n not in self.classes]
            if unknown:
                raise DrlError(f"no class {', '.join(map(repr, unknown))} in {self.name}; "
                               f"classes: {', '.join(self.classes) or 'none (unlabelled run)'}")
            return df["label"].astype(str).isin(names).to_numpy()
        mask = np.asarray(spec, dtype=bool)
        if mask.shape != (len(df),):
            raise DrlError(f"a group is a class name, a list of them or a boolean mask of "
                           f"{len(df)} objects (not shape {mask.shape})")
        return mask

    def compare(self, a, b=None):
        """Group A vs group B (class names or masks; ``b=None``: everything not in A) on every
        latent axis and morphology feature: Hedges' g with its CI and BH q, largest |g| first,
        as the Class map page's "Group A vs group B" computes it."""
        from drlcore.analysis.compare import compare_groups

        a_mask = self.group(a)
        b_mask = ~a_mask if b is None else self.group(b)
        return compare_groups(self.objects, a_mask, b_mask,
                              [*self.latent_columns, *self.morph_columns])

    def _dim(self, dim: int | str) -> int:
        if isinstance(dim, str):
            for j, name in enumerate(self.dim_names):
                if dim in (name, name.split(": ", 1)[-1], self.latent_columns[j]):
                    return j
            raise DrlError(f"no axis {dim!r}; axes: {', '.join(self.dim_names)}")
        if not 0 <= int(dim) < len(self.latent_columns):
            raise DrlError(f"axis {dim} does not exist: the run has {len(self.latent_columns)} "
                           f"(0-{len(self.latent_columns) - 1})")
        return int(dim)

    # ------------------------------------------------------------------ figures

    def figure(self, name: str, **options):
        """The Plotly figure the explorer draws, from the app's own builders (``explorer.figures``).

        ``"heatmap"`` (``method="pearson"|"spearman"|"mi"``, ``cluster=False``),
        ``"traversal"`` (``dim=0``, ``n_steps=9``), ``"class map"`` (``projection=None``: the
        first of :attr:`projections`; ``colour="class"``: ``class``, ``anomaly_score``, a latent
        or morphology column), ``"anomaly map"`` and ``"anomaly histogram"`` (``score=
        "anomaly_score"``, ``quantile=0.95`` of the known classes' scores flags),
        ``"groups"`` (``a``, ``b``: class names or masks; ``b=None``: the rest).
        Defaults are the app's, so an unchanged page and an option-less call draw the same."""
        key = _ALIASES.get(name.lower().replace("_", " ").replace("-", " "),
                           name.lower().replace("_", " ").replace("-", " "))
        build = {"heatmap": self._heatmap, "traversal": self._traversal_figure,
                 "class map": self._class_map, "anomaly map": self._anomaly_map,
                 "anomaly histogram": self._anomaly_histogram, "groups": self._groups}.get(key)
        if build is None:
            raise DrlError(f"no figure {name!r}; figures: {', '.join(FIGURES)}")
        try:
            from explorer import figures  # noqa: F401 - the app's builders, only when drawing
        except ImportError as exc:
            raise DrlError(f"figures need the explorer package and Plotly ({exc}); install "
                           f"drlcore with its default dependencies") from None
        import inspect

        accepted = inspect.signature(build).parameters
        wrong = sorted(set(options) - set(accepted))
        if wrong:
            raise DrlError(f"figure {name!r} takes no option {', '.join(wrong)}; its options: "
                           f"{', '.join(accepted) or 'none'}")
        return build(**options)

    def _heatmap(self, method: str = "pearson", cluster: bool = False, every: bool = False):
        from explorer.figures import run_heatmap

        corr = self.correlations
        if corr is None or corr.empty:
            raise DrlError(f"{self.name} has no {rundir.CORRELATIONS}: run `drl analyze` on it")
        return run_heatmap(corr, self.objects.columns, self.dim_names, self._axis_records,
                           method, cluster=cluster, every=every)

    def _traversal_figure(self, dim: int | str = 0, n_steps: int = 9):
        from drlcore.analysis.naming import axis_label
        from explorer.figures import traversal_captions, traversal_strip

        j = self._dim(dim)
        strip = self.traversal(j, n_steps)
        axis = self._axis_records[j] if j < len(self._axis_records) else {"name": self.dim_names[j]}
        return traversal_strip(self.thumbnail_bytes(strip["row"].tolist()),
                               traversal_captions(self.dim_names[j], strip["value"].tolist()),
                               title=axis_label(axis))

    def _projection(self, projection: str | None) -> str:
        if not self.projections:
            raise DrlError(f"{self.name} has no map coordinates (umap_x/pca_x): run `drl analyze`")
        projection = projection or self.projections[0]
        if projection not in self.projections:
            raise DrlError(f"no {projection!r} map; maps: {', '.join(self.projections)}")
        return projection

    def _class_map(self, projection: str | None = None, colour: str = "class"):
        from explorer.figures import latent_map, map_colour_choices, map_colour_column

        p = self._projection(projection)
        choices = map_colour_choices(self.objects.columns, self.latent_columns, self.dim_names,
                                     self.morph_columns, self.has_labels)
        if colour not in choices:  # as the page does: the first choice when "class" is not one
            if colour != "class":
                raise DrlError(f"cannot colour by {colour!r}; choices: {', '.join(choices)}")
            colour = next(iter(choices))
        column, continuous = map_colour_column(colour)
        return latent_map(self.objects, f"{p}_x", f"{p}_y", column, continuous,
                          colour_title=choices.get(colour), highlight=None, selected_rows=[],
                          background=None, background_name="other run")

    def _anomaly_flags(self, score: str, quantile: float):
        from drlcore.analysis.anomaly import flag_above_quantile

        df = self.objects
        if score not in df:
            raise DrlError(f"{self.name} has no {score!r} scores: run `drl analyze` on it")
        if "anomaly_known" in df:
            known = df["anomaly_known"].fillna(False).to_numpy(bool)
        else:
            known = np.ones(len(df), bool)
        values = df[score].to_numpy(float)
        threshold, flagged = flag_above_quantile(values, known, quantile)
        return values, known, threshold, flagged

    def _anomaly_map(self, score: str = "anomaly_score", quantile: float = 0.95,
                     projection: str | None = None):
        from explorer.figures import anomaly_map

        p = self._projection(projection)
        values, _, _, flagged = self._anomaly_flags(score, quantile)
        return anomaly_map(self.objects, p, values, flagged, self.has_labels)[0]

    def _anomaly_histogram(self, score: str = "anomaly_score", quantile: float = 0.95):
        from explorer.figures import anomaly_histogram

        titles = {"anomaly_score": "Combined (rank average)", "anomaly_knn": "kNN distance",
                  "anomaly_mahalanobis": "Mahalanobis distance",
                  "anomaly_recon": "Reconstruction error"}
        values, known, threshold, _ = self._anomaly_flags(score, quantile)
        return anomaly_histogram(values, known if self.has_labels else None, threshold,
                                 titles.get(score, score))

    def _groups(self, a=None, b=None):
        from explorer.figures import group_effect_chart, measure_labels

        if a is None:  # the page's start: the first two classes
            if len(self.classes) < 2:
                raise DrlError("name group a (and b): a class name, a list of them or a mask")
            a, b = self.classes[0], self.classes[1]
        table = self.compare(a, b)
        return group_effect_chart(table, measure_labels(self.latent_columns, self.dim_names,
                                                        self.morph_columns))


def open_run(path: str | os.PathLike) -> Run:
    """Open a run folder (written by ``drl run`` or :func:`run`); nothing is read until asked."""
    return Run(path)


def run(data: str | os.PathLike, out: str | os.PathLike, *, progress: bool | Callable = True,
        force: bool = False, cluster: str | None = None, scheduler: str | None = None,
        workers: int | None = None, **options) -> Run:
    """``drl run DATA --out OUT`` from Python; returns the opened run.

    ``options`` are ``drl run``'s, with ``-`` written ``_``: ``backbone``, ``weights``,
    ``cache_dir``, ``batch_size``, ``preprocess``, ``no_pad``, ``precision``, ``channels``,
    ``channel_pattern``, ``source_model``, ``known_classes``, ``epochs``, ``latent_dim``,
    ``anchor`` (built into the same settings by :mod:`drlcore.runs.options`), and any further
    ``FeatureConfig`` field (e.g. ``pretrained=False``). ``progress``:
    True draws bars (``tqdm.auto``: a widget in a notebook, text in a terminal), False is
    silent, a function is called as ``progress(stage, done, total, postfix)``."""
    from drlcore.progress import CallbackReporter, NullReporter, TqdmReporter
    from drlcore.runs.options import (FEATURE_OPTIONS, RUN_OPTIONS, cluster_config, feature_config,
                                      pipeline_config, prepare_run_folder)
    from drlcore.runs.pipeline import run_pipeline

    from dataclasses import fields

    from drlcore.embedding.features import FeatureConfig

    feature_fields = {f.name for f in fields(FeatureConfig)}
    unknown = sorted(set(options) - set(FEATURE_OPTIONS) - set(RUN_OPTIONS) - feature_fields)
    if unknown:
        raise DrlError(f"unknown option(s) {', '.join(unknown)}; drl.run takes "
                       f"{', '.join((*FEATURE_OPTIONS, *RUN_OPTIONS))}, progress, force, "
                       f"cluster, scheduler, workers (and any FeatureConfig field)")
    features = feature_config(**{k: v for k, v in options.items() if k not in RUN_OPTIONS})
    config = pipeline_config(features, **{k: v for k, v in options.items() if k in RUN_OPTIONS})
    dask = cluster_config(cluster, scheduler, workers)
    if callable(progress):
        reporter = CallbackReporter(progress)
    elif progress:
        reporter = TqdmReporter(notebook=True)
    else:
        reporter = NullReporter()
    folder = prepare_run_folder(out, data, force=force, cache_dir=options.get("cache_dir"))
    return Run(run_pipeline(data, folder, config, reporter=reporter, cluster=dask))
