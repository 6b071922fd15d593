"""Density estimators against closed forms (scipy, float64 NumPy) and their behaviour on singular data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from stepjax.irl import densities as dens


def _data(n=400, d=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return (rng.normal(size=(n, d)) @ a + rng.normal(size=d)).astype(np.float32)


def _cov(mix, k=0):
    chol = np.asarray(mix.chols[k], np.float64)
    return chol @ chol.T


def test_gaussian_matches_scipy_without_shrinkage():
    x = _data()
    mix = dens.fit_gaussian(jnp.asarray(x), shrinkage=0.0, reg=0.0)
    np.testing.assert_allclose(np.asarray(mix.means[0]), x.mean(0), rtol=1e-5, atol=1e-5)
    expected_cov = np.cov(x.astype(np.float64), rowvar=False, bias=True) + dens.ABS_FLOOR * np.eye(3)
    np.testing.assert_allclose(_cov(mix), expected_cov, rtol=1e-4, atol=1e-5)
    queries = _data(50, seed=1)
    want = stats.multivariate_normal(x.mean(0), expected_cov).logpdf(queries)
    np.testing.assert_allclose(np.asarray(dens.log_prob(mix, jnp.asarray(queries))), want, rtol=1e-4, atol=1e-3)


def test_shrinkage_pulls_correlations_towards_zero_and_keeps_variances():
    x = _data()
    raw = _cov(dens.fit_gaussian(jnp.asarray(x), shrinkage=0.0, reg=0.0))
    half = _cov(dens.fit_gaussian(jnp.asarray(x), shrinkage=0.5, reg=0.0))
    np.testing.assert_allclose(np.diag(half), np.diag(raw), rtol=1e-5)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(half[off], 0.5 * raw[off], rtol=1e-4, atol=1e-6)


def test_ledoit_wolf_matches_the_published_formula():
    """Ledoit & Wolf (2004) written with explicit outer products (float64) vs the vectorised estimator."""
    rng = np.random.default_rng(3)
    for n, d in ((10, 6), (200, 4), (5, 20)):
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
        xc = x - x.mean(0)
        s = xc.T @ xc / n
        mu = np.trace(s) / d
        delta = np.sum((s - mu * np.eye(d)) ** 2) / d
        beta = sum(np.sum((np.outer(r, r) - s) ** 2) for r in xc) / n**2 / d
        want = min(beta, delta) / delta
        got = float(dens.ledoit_wolf_shrinkage(jnp.asarray(x, jnp.float32)))
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), (n, d)
    assert 0.0 < want <= 1.0  # n < d: strong shrinkage


def test_kde_matches_brute_force_sum_of_kernels():
    x = _data(120)
    mix = dens.fit_kde(jnp.asarray(x), bandwidth=0.7, shrinkage=0.0, reg=0.0)
    cov = _cov(mix)
    n, d = x.shape
    sample_cov = np.cov(x.astype(np.float64), rowvar=False, bias=True) + dens.ABS_FLOOR * np.eye(d)
    np.testing.assert_allclose(cov, (0.7 * n ** (-1 / (d + 4))) ** 2 * sample_cov, rtol=1e-4, atol=1e-7)
    queries = np.concatenate([_data(30, seed=2), x[:5]])
    kernels = np.stack([stats.multivariate_normal(c, cov).logpdf(queries) for c in x.astype(np.float64)], 1)
    want = logsumexp(kernels, axis=1) - np.log(n)
    np.testing.assert_allclose(np.asarray(dens.log_prob(mix, jnp.asarray(queries))), want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("kind", ["gaussian", "kde", "gmm"])
def test_marginal_equals_integrating_out_the_other_dimensions(kind):
    x = _data(200)
    mix = dens.fit_density(kind, jnp.asarray(x), jax.random.key(0), shrinkage=0.1, components=3)
    marg = dens.marginal(mix, [0, 2])
    # Reference: every component's N(x_s; mean_s, Sigma_ss) in float64.
    q = _data(20, seed=5)[:, [0, 2]].astype(np.float64)
    logs = []
    for k in range(mix.means.shape[0]):
        cov = _cov(mix, min(k, mix.chols.shape[0] - 1))[np.ix_([0, 2], [0, 2])]
        mean = np.asarray(mix.means[k])[[0, 2]]
        logs.append(float(mix.log_weights[k]) + stats.multivariate_normal(mean, cov).logpdf(q))
    want = logsumexp(np.stack(logs, 1), axis=1)
    np.testing.assert_allclose(np.asarray(dens.log_prob(marg, jnp.asarray(q, jnp.float32))), want, rtol=1e-4, atol=2e-3)


def test_gmm_finds_two_clusters_and_integrates_to_one():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 0.3, 300), rng.normal(2, 0.5, 300)])[:, None].astype(np.float32)
    gmm = dens.fit_gmm(jnp.asarray(x), jax.random.key(1), components=2, iterations=50)
    means = np.sort(np.asarray(gmm.means[:, 0]))
    np.testing.assert_allclose(means, [-3, 2], atol=0.1)
    single = dens.fit_gaussian(jnp.asarray(x), shrinkage=0.0)
    assert float(dens.log_prob(gmm, jnp.asarray(x)).mean()) > float(dens.log_prob(single, jnp.asarray(x)).mean()) + 0.5
    grid = np.linspace(-8, 8, 4001, dtype=np.float32)[:, None]
    mass = np.trapezoid(np.exp(np.asarray(dens.log_prob(gmm, jnp.asarray(grid)))), grid[:, 0])
    assert mass == pytest.approx(1.0, abs=1e-3)


SINGULAR = {
    "constant_column": lambda x: np.concatenate([x, np.full((len(x), 1), 3.0, np.float32)], 1),
    "duplicated_column": lambda x: np.concatenate([x, x[:, :1]], 1),
    "identical_points": lambda x: np.repeat(x[:1], len(x), 0),
    "fewer_points_than_dims": lambda x: np.tile(x[:2], (1, 4)),
}


@pytest.mark.parametrize("case", sorted(SINGULAR))
@pytest.mark.parametrize("kind", ["gaussian", "kde", "gmm"])
def test_singular_data_gives_finite_log_densities(kind, case):
    x = SINGULAR[case](_data(64))
    mix = dens.fit_density(kind, jnp.asarray(x), jax.random.key(0), shrinkage=0.0, components=3)
    far = x[:8] + 100.0
    for q in (x[:8], far):
        out = np.asarray(dens.log_prob(mix, jnp.asarray(q)))
        assert np.all(np.isfinite(out)), (kind, case, out)
    assert np.all(np.isfinite(np.asarray(mix.chols)))
    # The data is more likely than points 100 away.
    assert float(dens.log_prob(mix, jnp.asarray(x[:8])).min()) > float(dens.log_prob(mix, jnp.asarray(far)).max())
    marg = dens.marginal(mix, list(range(x.shape[1] - 1)))
    assert np.all(np.isfinite(np.asarray(dens.log_prob(marg, jnp.asarray(x[:8, :-1])))))
