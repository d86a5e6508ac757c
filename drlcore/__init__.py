"""drlcore: the engine behind the disentangled-representation explorer.

The tree follows the pipeline, one subpackage per stage::

    data/         images in, and what is kept on disk
                  discover -> decode -> channels/geometry (ingest gathers them);
                  cache (content stores), rundir (the run folder), outdir (where to write)
    embedding/    backbones (timm registry) -> features (``drl features``), precision, distributed
    disentangle/  dsprites, cells (synthetic sources; their factor interface shared in render)
                  -> vae, train -> source (``drl train-source``)
                  -> transfer (``drl transfer``) -> encode (``drl encode``); artifacts (model files)
    analysis/     morphology, correlation, naming, classify, anomaly, projection, traversal,
                  compare, metrics (pure cores), driven by analyze (``drl analyze``)
    runs/         pipeline (``drl run``), options (its settings, shared by the CLI and the API),
                  api (the Python API below), demo, jobs (background work), export, slides

Shared by every stage: ``errors`` (the project's clear errors), ``config`` (strict dataclass
loading), ``io`` (atomic writes, hashing), ``progress`` (terminal bar or app callback),
``validation``, ``workers`` (processes for the other cores, that end with this one). ``cli``
only parses arguments and calls the stages.

The Python API (``drlcore.runs.api``), re-exported here and imported only when first used, so
``import drlcore`` stays light::

    import drlcore as drl
    run = drl.open_run("runs/blood")     # run.objects, run.axes, run.figure("heatmap"), ...
    run = drl.run("images/", "runs/new", anchor="area")   # ``drl run`` from Python

Imports only run downwards: ``data`` needs nothing above it, ``embedding`` reads ``data``,
``disentangle`` reads ``embedding`` and ``data``, ``analysis`` reads the three, ``runs`` drives
them all. Nothing here imports Streamlit or Plotly, touches a GPU or reads environment variables
at import time.
"""

__version__ = "0.1.0"

# Public names -> the module that defines them, imported on first use (PEP 562).
_LAZY = {"open_run": "drlcore.runs.api", "run": "drlcore.runs.api", "Run": "drlcore.runs.api",
         "Analysis": "drlcore.runs.api", "FIGURES": "drlcore.runs.api",
         "DrlError": "drlcore.errors"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'drlcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
