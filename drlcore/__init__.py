"""drlcore: the engine behind the disentangled-representation explorer.

One stage per module:

- ``ingest``      image folders / CSV / zip -> decoded, preprocessed images (+ skipped list)
- ``backbones``   registry of pretrained feature extractors (timm underneath)
- ``cache``       content-hash feature cache
- ``features``    the ``drl features`` stage (ingest -> cache -> backbone -> files)
- ``dsprites``    Texture-dSprites renderer and weak-supervision pair sampling
- ``cells``       synthetic-cell renderer (size, shape, nucleus, stain, texture... factors)
- ``vae``         the VAE over backbone features and its losses (Ada-GVAE, beta-VAE)
- ``train``       the training loops and evaluation shared by source training and transfer
- ``source``      source training on either renderer (``drl train-source``)
- ``artifacts``   model directories: safetensors + config.json + metrics.json
- ``encode``      ``drl encode``: model + dataset -> objects.parquet
- ``metrics``     MIG, DCI, OMES (pure functions over arrays)
- ``morphology``  handcrafted features (scikit-image)
- ``correlation`` latent <-> morphology association
- ``classify``    classification from latents / features
- ``anomaly``     open-set anomaly scorers
- ``projection``  PCA / UMAP reducers
- ``analyze``     ``drl analyze``; ``pipeline``: ``drl run``; ``demo``: the built-in demo run
- ``io``          atomic writes, hashing; ``progress``: progress reporting; ``errors``

Nothing here imports Streamlit or Plotly, touches a GPU or reads environment variables at
import time.
"""

__version__ = "0.1.0"
