"""drlcore: the engine behind the disentangled-representation explorer.

The tree follows the pipeline, one subpackage per stage::

    data/         images in, and what is kept on disk
                  discover -> decode -> channels/geometry (ingest gathers them);
                  cache (content stores), rundir (the run folder), outdir (where to write)
    embedding/    backbones (timm registry) -> features (``drl features``), precision, distributed
    disentangle/  dsprites, cells (synthetic sources) -> vae, train -> source (``drl train-source``)
                  -> transfer (``drl transfer``) -> encode (``drl encode``); artifacts (model files)
    analysis/     morphology, correlation, naming, classify, anomaly, projection, traversal,
                  compare, metrics (pure cores), driven by analyze (``drl analyze``)
    runs/         pipeline (``drl run``), demo, jobs (background work), export, slides

Shared by every stage: ``errors`` (the project's clear errors), ``config`` (strict dataclass
loading), ``io`` (atomic writes, hashing), ``progress`` (terminal bar or app callback),
``validation``. ``cli`` only parses arguments and calls the stages.

Imports only run downwards: ``data`` needs nothing above it, ``embedding`` reads ``data``,
``disentangle`` reads ``embedding`` and ``data``, ``analysis`` reads the three, ``runs`` drives
them all. Nothing here imports Streamlit or Plotly, touches a GPU or reads environment variables
at import time.
"""

__version__ = "0.1.0"
