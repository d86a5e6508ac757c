"""Backbone features: the first learned stage.

- ``backbones``    registry of pretrained extractors (timm), offline weights, DINO
- ``features``     the ``drl features`` stage: images -> cached backbone features
- ``precision``    whether reduced precision is safe, judged downstream
- ``distributed``  the same embedding on a Dask cluster
"""
