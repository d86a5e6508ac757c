"""The disentangling VAE: synthetic sources, training, transfer to real data, encoding.

- ``dsprites``   Texture-dSprites renderer and weak-supervision pairs
- ``cells``      synthetic-cell renderer with known biological factors
- ``vae``        the VAE over backbone features and its losses (Ada-GVAE, beta-VAE)
- ``train``      optimisation loops shared by source training and transfer
- ``source``     ``drl train-source``
- ``transfer``   ``drl transfer``: unsupervised fine-tuning on a user's features
- ``artifacts``  model folders (safetensors + config.json + metrics.json)
- ``encode``     ``drl encode``: model + features -> latents per object
"""
