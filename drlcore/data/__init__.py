"""Data in and on disk: discovery, decoding, channels, preprocessing geometry, the run folder and
the content caches.

- ``discover``  find images and labels (class folders, CSV, zip, per-channel files)
- ``decode``    bytes of one image -> pixels (8/16-bit, multi-channel, OME-TIFF)
- ``channels``  channel names, display colours, the composite the backbone sees
- ``geometry``  square for the backbone (pad / canvas / stretch), small for a thumbnail
- ``ingest``    the three steps above behind one import
- ``cache``     content-hash stores (features, models, morphology, projections)
- ``rundir``    the run folder: manifest, tables, thumbnails (the contract with the app)
- ``outdir``    where a run may be written
"""
