"""Shipped source models (installed as the package ``drlcore.assets``).

Each folder is a model directory (``config.json`` + ``model.safetensors`` + ``metrics.json``);
``README.md`` says how each was made and measured. This file only makes the folder package data,
so a wheel or a non-editable install carries the models.
"""
