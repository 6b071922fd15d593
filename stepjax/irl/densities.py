"""Density estimators for PDEIL as Gaussian mixtures: one full-covariance Gaussian (with shrinkage), a Gaussian
kernel density estimate (one component per data point, shared bandwidth matrix) and a small mixture fitted by EM.

All three are a ``Mixture`` (log-weights, means, lower Cholesky factors), so log-densities, marginals (needed for
``rho_E(s)`` from a joint ``rho_E(s, a)``: the marginal of a Gaussian mixture is the mixture of the marginals) and
conditionals share one code path. Everything is in log space; covariances get a ridge (relative ``reg`` times the
mean variance plus an absolute floor), so singular data (constant or duplicated columns, repeated points) still give
finite log-densities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import struct

ABS_FLOOR = 1e-6  # absolute variance floor: identical points still give a proper density


@struct.dataclass
class Mixture:
    """``sum_k w_k N(x; mean_k, L_k L_k^T)``.

    Attributes:
      log_weights: ``[K]`` (log-softmax normalised).
      means: ``[K, d]``.
      chols: ``[K, d, d]`` lower Cholesky factors, or ``[1, d, d]`` shared by all components (kernel estimates).
    """

    log_weights: jax.Array
    means: jax.Array
    chols: jax.Array

    @property
    def dim(self) -> int:
        return self.means.shape[-1]


def _log_det(chols: jax.Array) -> jax.Array:
    return jnp.sum(jnp.log(jnp.diagonal(chols, axis1=-2, axis2=-1)), -1)


def _inverse_chols(chols: jax.Array) -> jax.Array:
    eye = jnp.broadcast_to(jnp.eye(chols.shape[-1], dtype=chols.dtype), chols.shape)
    return jax.scipy.linalg.solve_triangular(chols, eye, lower=True)


def component_log_probs(mix: Mixture, x: jax.Array) -> jax.Array:
    """``log w_k + log N(x; mean_k, Sigma_k)``: ``x [n, d] -> [n, K]``."""
    d = mix.dim
    inv = _inverse_chols(mix.chols)
    norm = -0.5 * d * math.log(2 * math.pi) - _log_det(mix.chols)  # [K] or [1]
    if mix.chols.shape[0] == 1 and mix.means.shape[0] > 1:
        # Shared bandwidth: whiten once and use |a - b|^2 = |a|^2 + |b|^2 - 2 a.b (no [n, K, d] intermediate).
        # Centre first so the expansion does not cancel catastrophically in float32.
        centre = jnp.mean(mix.means, 0)
        zx = (x - centre) @ inv[0].T
        zm = (mix.means - centre) @ inv[0].T
        sq = jnp.sum(zx**2, -1)[:, None] + jnp.sum(zm**2, -1)[None, :] - 2.0 * zx @ zm.T
        sq = jnp.maximum(sq, 0.0)
    else:
        diff = x[:, None, :] - mix.means[None, :, :]  # [n, K, d]
        z = jnp.einsum("kij,nkj->nki", jnp.broadcast_to(inv, (mix.means.shape[0], d, d)), diff)
        sq = jnp.sum(z**2, -1)
    return mix.log_weights[None, :] + norm[None, :] - 0.5 * sq


def log_prob(mix: Mixture, x: jax.Array) -> jax.Array:
    """Log-density ``x [..., d] -> [...]`` (logsumexp over components)."""
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    out = jax.nn.logsumexp(component_log_probs(mix, flat), axis=-1)
    return out.reshape(x.shape[:-1])


def marginal(mix: Mixture, dims: Sequence[int]) -> Mixture:
    """The mixture's marginal over ``dims`` (static indices): each component's mean and covariance sub-block."""
    dims = jnp.asarray(list(dims))
    cov = mix.chols @ jnp.swapaxes(mix.chols, -1, -2)
    sub = cov[:, dims][:, :, dims]
    return Mixture(mix.log_weights, mix.means[:, dims], _safe_cholesky(sub))


def _safe_cholesky(cov: jax.Array) -> jax.Array:
    """Cholesky with a fallback: if float32 round-off makes a factor non-finite, use the diagonal's square root."""
    chol = jnp.linalg.cholesky(cov)
    diag = jnp.sqrt(jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), ABS_FLOOR))
    fallback = jax.vmap(jnp.diag)(diag.reshape(-1, diag.shape[-1])).reshape(cov.shape)
    bad = ~jnp.all(jnp.isfinite(chol), axis=(-2, -1), keepdims=True)
    return jnp.where(bad, fallback, chol)


def regularize(cov: jax.Array, reg: float) -> jax.Array:
    """``cov + reg * diag(cov) + ABS_FLOOR * I`` (``cov [..., d, d]``): a ridge relative to each variable's own
    variance (scale-free), plus an absolute floor so constant variables still get a proper density."""
    d = cov.shape[-1]
    eye = jnp.eye(d, dtype=cov.dtype)
    return cov + reg * cov * eye + ABS_FLOOR * eye


def ledoit_wolf_shrinkage(x: jax.Array) -> jax.Array:
    """Ledoit-Wolf's optimal shrinkage of the sample covariance towards ``mu * I`` (scikit-learn's formula):
    ``x [n, d]`` (any centring) -> a scalar in ``[0, 1]``."""
    n, d = x.shape
    x = x - x.mean(0)
    x2 = x**2
    emp_trace = jnp.sum(x2, 0) / n
    mu = jnp.sum(emp_trace) / d
    beta_ = jnp.sum(x2.T @ x2)
    delta_ = jnp.sum((x.T @ x) ** 2) / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * jnp.sum(emp_trace) + d * mu**2) / d
    beta = jnp.minimum(beta, delta)
    return jnp.where(delta > 0, beta / jnp.maximum(delta, 1e-30), 0.0)


def shrunk_covariance(x: jax.Array, shrinkage: float | None, reg: float, weights: jax.Array | None = None):
    """Mean and shrunk covariance of ``x [n, d]``.

    The correlations are shrunk towards the identity, ``Sigma = D^1/2 ((1 - lam) R + lam I) D^1/2`` (``D`` the
    variances, ``R`` the correlation matrix): unlike shrinking towards ``(tr S / d) I`` this does not inflate
    variables on small scales (CartPole's pole angle has 1/50 the spread of its cart position). ``shrinkage=None``
    picks ``lam`` by Ledoit-Wolf on the standardised data (unweighted). ``weights [n]`` weight the points.
    Then ``regularize``.
    """
    x = x.astype(jnp.float32)
    n, d = x.shape
    w = jnp.full((n,), 1.0 / n) if weights is None else weights / jnp.maximum(weights.sum(), 1e-12)
    mean = w @ x
    xc = x - mean
    cov = (xc * w[:, None]).T @ xc
    std = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 1e-30))
    lam = ledoit_wolf_shrinkage(xc / std) if shrinkage is None else jnp.asarray(shrinkage, jnp.float32)
    eye = jnp.eye(d, dtype=cov.dtype)
    cov = (1.0 - lam) * cov + lam * cov * eye
    return mean, regularize(cov, reg)


def fit_gaussian(x: jax.Array, *, shrinkage: float | None = None, reg: float = 1e-4) -> Mixture:
    """One full-covariance Gaussian: ``x [n, d]``; ``shrinkage=None`` is Ledoit-Wolf."""
    mean, cov = shrunk_covariance(x, shrinkage, reg)
    return Mixture(jnp.zeros((1,)), mean[None], _safe_cholesky(cov)[None])


def fit_kde(x: jax.Array, *, bandwidth: float = 1.0, shrinkage: float | None = None, reg: float = 1e-4) -> Mixture:
    """Gaussian kernel density estimate: one component per point, bandwidth matrix ``(bandwidth * h_Scott)^2 Sigma``
    with ``h_Scott = n^(-1 / (d + 4))`` and ``Sigma`` the shrunk sample covariance."""
    x = x.astype(jnp.float32)
    n, d = x.shape
    _, cov = shrunk_covariance(x, shrinkage, reg)
    h = bandwidth * n ** (-1.0 / (d + 4))
    chol = _safe_cholesky(cov * h**2)
    return Mixture(jnp.full((n,), -math.log(n)), x, chol[None])


def fit_gmm(
    x: jax.Array,
    key: jax.Array,
    *,
    components: int = 8,
    iterations: int = 30,
    shrinkage: float = 0.05,
    reg: float = 1e-3,
) -> Mixture:
    """A ``components``-Gaussian mixture by EM (fixed ``iterations``, jittable). Means start at k-means++ seeds
    (in standardised coordinates), covariances at the shrunk data covariance scaled by ``K^(-2/d)`` (one
    component's share of the volume; starting every component at the full covariance leaves EM stuck in the
    symmetric solution); each M-step shrinks and regularises every component's covariance
    (and floors it at ``reg`` times the data's variances), so a component collapsing onto a few points stays
    finite."""
    x = x.astype(jnp.float32)
    d = x.shape[1]
    _, cov = shrunk_covariance(x, shrinkage, reg)
    init = Mixture(
        jnp.full((components,), -math.log(components)),
        _kmeans_plus_plus(x / jnp.sqrt(jnp.diagonal(cov)), components, key) * jnp.sqrt(jnp.diagonal(cov)),
        jnp.broadcast_to(_safe_cholesky(cov * components ** (-2.0 / d)), (components, d, d)),
    )

    def em(mix, _):
        logp = component_log_probs(mix, x)
        resp = jnp.exp(logp - jax.nn.logsumexp(logp, -1, keepdims=True))  # [n, K]
        nk = resp.sum(0) + 1e-6
        means = (resp.T @ x) / nk[:, None]
        xc = x[None] - means[:, None]  # [K, n, d]
        covs = jnp.einsum("kn,kni,knj->kij", resp.T, xc, xc) / nk[:, None, None]
        eye = jnp.eye(d)
        covs = regularize((1 - shrinkage) * covs + shrinkage * covs * eye, reg)
        covs = covs + reg * cov * eye  # and a floor relative to the data's own variances
        return Mixture(jax.nn.log_softmax(jnp.log(nk)), means, _safe_cholesky(covs)), None

    mix, _ = jax.lax.scan(em, init, None, iterations)
    return mix


def _kmeans_plus_plus(x: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """``k`` seeds from ``x [n, d]``: the first uniformly, each next with probability proportional to the squared
    distance to the nearest seed so far (Arthur & Vassilvitskii 2007)."""
    n = x.shape[0]
    keys = jax.random.split(key, k)
    first = x[jax.random.randint(keys[0], (), 0, n)]
    seeds = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    nearest = jnp.sum((x - first) ** 2, -1)

    def pick(i, carry):
        seeds, nearest = carry
        logits = jnp.log(jnp.maximum(nearest, 1e-30))
        new = x[jax.random.categorical(keys[i], logits)]
        return seeds.at[i].set(new), jnp.minimum(nearest, jnp.sum((x - new) ** 2, -1))

    seeds, _ = jax.lax.fori_loop(1, k, pick, (seeds, nearest))
    return seeds


DENSITIES = ("gaussian", "kde", "gmm")


def fit_density(
    kind: str,
    x: jax.Array,
    key: jax.Array,
    *,
    shrinkage: float | None = None,
    reg: float = 1e-4,
    bandwidth: float = 1.0,
    components: int = 8,
    iterations: int = 30,
) -> Mixture:
    """Dispatches on ``kind`` in ``DENSITIES``."""
    if kind == "gaussian":
        return fit_gaussian(x, shrinkage=shrinkage, reg=reg)
    if kind == "kde":
        return fit_kde(x, bandwidth=bandwidth, shrinkage=shrinkage, reg=reg)
    if kind == "gmm":
        return fit_gmm(
            x, key, components=components, iterations=iterations, shrinkage=0.05 if shrinkage is None else shrinkage
        )
    raise ValueError(f"unknown density {kind!r}; expected one of {DENSITIES}")
