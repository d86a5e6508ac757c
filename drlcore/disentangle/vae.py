"""The VAE over backbone features, and its losses (beta-VAE, Ada-GVAE).

The model never sees pixels: a frozen pretrained backbone turns each image into a feature vector
(1280-d for EfficientNet-Lite0), and this small MLP VAE learns a ``latent_dim``-dimensional code of
those vectors. That is what makes the method cheap enough for a laptop and lets a model trained on
rendered shapes (Texture-dSprites) transfer to microscopy images: both live in the same feature space.

Likelihood. Features are standardised per dimension (mean 0, std 1 over the training data) and the
decoder is a Gaussian with unit variance in that space, so the reconstruction term is
``0.5 * sum_d (x_d - x̂_d)**2``. Why Gaussian and not Bernoulli: features are unbounded real numbers,
not intensities in [0, 1]. Why standardise: raw feature dimensions differ in scale by orders of
magnitude, and without it a handful of large dimensions would dominate the squared error and so
decide what the latents encode. The mean and std are *buffers* of the module, fitted from data by
``fit_standardisation`` and saved with the weights, so an encoder always applies exactly the
standardisation it was trained with.

Losses (all return per-batch means; parts are returned for logging):

- ``beta_vae_loss``: ELBO with the KL to N(0, I) weighted by beta (Higgins et al. 2017).
- ``ada_gvae_loss``: weakly supervised Ada-GVAE (Locatello et al. 2020, "Weakly-Supervised
  Disentanglement Without Compromises"): two images that differ in a few unknown factors share
  the posterior of the latent dimensions that the encoder finds barely changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from drlcore.errors import DrlError

__all__ = [
    "VAEConfig",
    "FeatureVAE",
    "kl_per_dim",
    "gaussian_kl_between",
    "ada_gvae_aggregate",
    "ada_gvae_loss",
    "beta_vae_loss",
    "gaussian_nll",
    "describe",
]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}

# Posterior log-variances are clamped to this range: exp(-20) ~ 2e-9 and exp(10) ~ 2e4 are far
# beyond anything a sensible posterior needs, and the clamp keeps exp() finite when an early, badly
# conditioned step would otherwise overflow to inf and poison the whole run with NaNs.
LOGVAR_MIN, LOGVAR_MAX = -20.0, 10.0

# Feature dimensions whose training spread is below this are treated as constant: dividing by a
# near-zero std would turn float noise into huge standardised values.
_MIN_FEATURE_STD = 1e-6


@dataclass(frozen=True)
class VAEConfig:
    input_dim: int
    latent_dim: int = 10
    hidden_dims: tuple[int, ...] = (512, 256)
    activation: str = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # JSON gives lists; a frozen dataclass should hold a hashable tuple.
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if int(self.input_dim) < 1 or int(self.latent_dim) < 1:
            raise DrlError(f"VAEConfig: input_dim and latent_dim must be >= 1, got "
                           f"{self.input_dim} and {self.latent_dim}")
        if any(h < 1 for h in self.hidden_dims):
            raise DrlError(f"VAEConfig: hidden_dims must be positive, got {self.hidden_dims}")
        if self.activation not in _ACTIVATIONS:
            raise DrlError(f"VAEConfig: unknown activation {self.activation!r}; "
                           f"choose one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise DrlError(f"VAEConfig: dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        from drlcore.config import from_dict

        return from_dict(cls, d)


def _mlp(dims: list[int], activation: str, dropout: float) -> nn.Sequential:
    """Linear layers with activation (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class FeatureVAE(nn.Module):
    """MLP VAE on (standardised) backbone features.

    ``encode`` and ``reconstruct`` take *raw* features, as the backbone produced them; the model
    standardises them itself with its stored buffers. ``decode`` returns a reconstruction in the
    standardised space, which is where the likelihood is defined.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = _mlp([c.input_dim, *c.hidden_dims, 2 * c.latent_dim], c.activation, c.dropout)
        self.decoder = _mlp([c.latent_dim, *reversed(c.hidden_dims), c.input_dim], c.activation,
                            c.dropout)
        # Identity standardisation until fitted; `standardisation_fitted` is a buffer (not a Python
        # attribute) so that a loaded model knows it was fitted.
        self.register_buffer("feature_mean", torch.zeros(c.input_dim))
        self.register_buffer("feature_std", torch.ones(c.input_dim))
        self.register_buffer("standardisation_fitted", torch.zeros((), dtype=torch.bool))

    # -- standardisation ------------------------------------------------------------------------

    @torch.no_grad()
    def fit_standardisation(self, features: np.ndarray | torch.Tensor,
                            min_relative_std: float = 0.0) -> None:
        """Fit the per-dimension mean and std. ``min_relative_std`` floors each std at that
        fraction of the median std: backbone features include nearly dead units (non-zero on a
        handful of images), which plain standardisation turns into spikes of |z| ~ sqrt(n) that
        then dominate the squared-error likelihood (see drlcore.disentangle.transfer)."""
        x = torch.as_tensor(features, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise DrlError(f"cannot fit standardisation: expected features of shape (n, "
                           f"{self.config.input_dim}), got {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise DrlError("cannot fit standardisation on fewer than 2 feature vectors")
        if not torch.isfinite(x).all():
            raise DrlError("cannot fit standardisation: features contain NaN or infinity")
        mean = x.mean(0)
        std = x.std(0)
        std = torch.where(std < _MIN_FEATURE_STD, torch.ones_like(std), std)
        if min_relative_std > 0:
            std = std.clamp(min=float(min_relative_std) * float(torch.quantile(std, 0.5)))
        self.feature_mean.copy_(mean.to(self.feature_mean.dtype))
        self.feature_std.copy_(std.to(self.feature_std.dtype))
        self.standardisation_fitted.fill_(True)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise DrlError(f"the model expects features of shape (n, {self.config.input_dim}), "
                           f"got {tuple(x.shape)}; were they made with a different backbone?")
        return (x - self.feature_mean) / self.feature_std

    # -- model ----------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw features (n, D) -> posterior mean and log-variance, each (n, J)."""
        return self.encode_standardised(self.standardise(x))

    def encode_standardised(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` of features already standardised with this model's buffers (training
        standardises its feature matrix once instead of every batch twice)."""
        h = self.encoder(z)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes (n, J) -> reconstruction in the standardised feature space (n, D)."""
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features -> standardised reconstruction from the posterior mean (no sampling)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)


# -- losses ---------------------------------------------------------------------------------------


def gaussian_nll(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-likelihood (up to a constant) of a unit-variance Gaussian decoder."""
    return 0.5 * (recon - target).pow(2).sum(dim=1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per sample and dimension, shape (n, J)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_kl_between(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                        logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, var1) || N(mu2, var2)) per sample and dimension, in closed form."""
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / logvar2.exp() - 1.0)


def _reparameterise(mu: torch.Tensor, logvar: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + eps * (0.5 * logvar).exp()


def ada_gvae_aggregate(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                       logvar2: torch.Tensor):
    """Share the posteriors of the latent dimensions that did not change within each pair.

    For each pair, delta_j = KL(q(z_j|x1) || q(z_j|x2)). Dimensions whose delta is below the
    pair's own midpoint tau = (max_j delta_j + min_j delta_j) / 2 are taken as "shared" (the
    factors they encode were not changed between the two images) and both posteriors are replaced
    by their average; the others are left alone. Adaptive, because the number of changed factors
    is unknown.

    The threshold is computed per pair. (The reference implementation takes max/min over the
    whole batch, which lets one pair with a large change decide the threshold for all others and
    share nothing - or everything - in pairs whose deltas live on another scale.)

    The average of two Gaussians is taken as mean of means and mean of *variances*, as in the
    paper: averaging log-variances would give the geometric mean and systematically shrink the
    shared variance.

    Returns ``(mu1_agg, logvar1_agg, mu2_agg, logvar2_agg, shared)`` with ``shared`` a bool (n, J).
    """
    if not (mu1.shape == logvar1.shape == mu2.shape == logvar2.shape) or mu1.ndim != 2:
        raise ValueError("ada_gvae_aggregate: all four inputs must have the same (n, J) shape, got "
                         f"{[tuple(t.shape) for t in (mu1, logvar1, mu2, logvar2)]}")
    delta = gaussian_kl_between(mu1, logvar1, mu2, logvar2)
    tau = 0.5 * (delta.max(dim=1, keepdim=True).values + delta.min(dim=1, keepdim=True).values)
    shared = delta < tau

    mu_avg = 0.5 * (mu1 + mu2)
    logvar_avg = torch.log(0.5 * (logvar1.exp() + logvar2.exp()))
    mu1_agg = torch.where(shared, mu_avg, mu1)
    mu2_agg = torch.where(shared, mu_avg, mu2)
    logvar1_agg = torch.where(shared, logvar_avg, logvar1)
    logvar2_agg = torch.where(shared, logvar_avg, logvar2)
    return mu1_agg, logvar1_agg, mu2_agg, logvar2_agg, shared


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise DrlError(f"{what} became {loss.item()} during training; try a lower learning rate "
                       "or check the features for extreme values")


def beta_vae_loss(model: FeatureVAE, x: torch.Tensor, beta: float,
                  generator: torch.Generator | None = None, capacity: float | None = None,
                  return_mu: bool = False, standardised: bool = False):
    """Negative ELBO with a beta-weighted KL, averaged over the batch of raw features ``x``.

    ``capacity`` C (nats): the KL term becomes ``beta * |KL - C|`` (Burgess et al. 2018,
    "Understanding disentangling in beta-VAE"): the code is pushed towards carrying C nats, not
    towards zero, so raising C during training lets information in gradually. ``return_mu``
    also returns the posterior means (for terms added on top, such as anchored axes).
    ``standardised``: ``x`` is ``model.standardise(raw)`` already (the same numbers, bit for bit:
    standardising is elementwise, so doing it once per feature matrix changes nothing).
    """
    target = x if standardised else model.standardise(x)
    mu, logvar = model.encode_standardised(target)
    z = _reparameterise(mu, logvar, generator)
    recon = gaussian_nll(model.decode(z), target).mean()
    kl = kl_per_dim(mu, logvar).sum(dim=1).mean()
    loss = recon + beta * (kl if capacity is None else (kl - capacity).abs())
    _check_finite(loss, "the beta-VAE loss")
    parts = {"loss": loss.item(), "recon": recon.item(), "kl": kl.item()}
    return (loss, parts, mu) if return_mu else (loss, parts)


def ada_gvae_loss(model: FeatureVAE, x1: torch.Tensor, x2: torch.Tensor, beta: float,
                  generator: torch.Generator | None = None,
                  standardised: bool = False) -> tuple[torch.Tensor, dict]:
    """Negative ELBO of both images of each weak pair under the aggregated posteriors
    (``standardised`` as in ``beta_vae_loss``)."""
    if x1.shape != x2.shape:
        raise ValueError(f"pair halves differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    if not standardised:
        x1, x2 = model.standardise(x1), model.standardise(x2)
    mu1, logvar1 = model.encode_standardised(x1)
    mu2, logvar2 = model.encode_standardised(x2)
    mu1, logvar1, mu2, logvar2, shared = ada_gvae_aggregate(mu1, logvar1, mu2, logvar2)
    z1 = _reparameterise(mu1, logvar1, generator)
    z2 = _reparameterise(mu2, logvar2, generator)
    recon = (gaussian_nll(model.decode(z1), x1) + gaussian_nll(model.decode(z2), x2)).mean()
    kl = (kl_per_dim(mu1, logvar1).sum(dim=1) + kl_per_dim(mu2, logvar2).sum(dim=1)).mean()
    loss = recon + beta * kl
    _check_finite(loss, "the Ada-GVAE loss")
    return loss, {"loss": loss.item(), "recon": recon.item(), "kl": kl.item(),
                  "shared_fraction": shared.float().mean().item()}


def describe(model: FeatureVAE) -> str:
    """One line for logs: architecture and parameter count."""
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    return (f"FeatureVAE {c.input_dim} -> {list(c.hidden_dims)} -> {c.latent_dim} latents "
            f"({c.activation}, {n / 1e6:.2f} M parameters)")
