"""Whole runs: the pipeline, the demo, background jobs and what a run exports.

- ``pipeline``  ``drl run``: features -> transfer -> encode -> analyze, resumable
- ``demo``      the built-in demo run
- ``jobs``      long work outside the web request, progress on disk
- ``export``    h5ad / csv / parquet
- ``slides``    ``drl figures``: stamped slide figures
"""
