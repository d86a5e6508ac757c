"""What a run says about cells: measurements, metrics and maps (pure cores, thin drivers).

- ``morphology``   handcrafted measurements per object (scikit-image)
- ``correlation``  latent axes vs measurements, with intervals
- ``naming``       axis names from the run's own data
- ``classify``     class information in latents / raw features
- ``anomaly``      open-set anomaly scorers
- ``projection``   PCA / UMAP maps
- ``traversal``    latent traversals as nearest real objects
- ``compare``      group A vs group B effect sizes
- ``metrics``      MIG, DCI, OMES
- ``scale``        sampling rules for very large runs
- ``analyze``      the ``drl analyze`` stage that drives them
"""
