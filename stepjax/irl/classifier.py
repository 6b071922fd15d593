"""Expert action classifier for discrete actions: ``pi_E(a | s)`` as a softmax MLP trained by cross-entropy.

PDEIL's discrete case needs ``log pi_E(a_i | s_i)`` for each row ``i``: the row's own action, gathered with
``take_along_axis`` (``P[arange(N), a]``). DI-engine's ``predict_proba(s)[a]`` indexes *rows* by the actions and
returns an ``[N, C]`` array (a silent bug); ``action_log_prob`` returns ``[N]`` and the tests pin the per-row choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from stepjax.rl.env_policies import MLP


def classifier_graphdef(obs_size: int, num_actions: int, hidden: Sequence[int]) -> nnx.GraphDef:
    return nnx.graphdef(MLP(obs_size, hidden, num_actions, activation="relu", rngs=nnx.Rngs(0)))


def logits(graphdef: nnx.GraphDef, params: nnx.State, obs: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params)(obs)


def action_log_prob(graphdef: nnx.GraphDef, params: nnx.State, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """``log pi_E(a_i | s_i)``: ``obs [..., d]``, ``actions [...]`` (int) -> ``[...]``."""
    logp = jax.nn.log_softmax(logits(graphdef, params, obs), -1)
    return jnp.take_along_axis(logp, actions[..., None].astype(jnp.int32), -1)[..., 0]


def fit_classifier(
    obs: jax.Array,
    actions: jax.Array,
    num_actions: int,
    key: jax.Array,
    *,
    hidden: Sequence[int] = (64, 64),
    steps: int = 1000,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.0,
) -> tuple[nnx.GraphDef, nnx.State]:
    """Trains the classifier with AdamW on random minibatches; jittable (a ``lax.scan`` over ``steps``).

    Args:
      obs: ``[n, d]`` expert states; actions: ``[n]`` int expert actions.
      label_smoothing: mixes the one-hot targets with uniform (keeps ``log pi_E`` of unseen actions bounded).
    Returns:
      ``(graphdef, params)`` for ``action_log_prob``.
    """
    obs = obs.astype(jnp.float32)
    n, d = obs.shape
    k_init, k_batches = jax.random.split(key)
    graphdef, params = nnx.split(MLP(d, hidden, num_actions, activation="relu", rngs=nnx.Rngs(params=k_init)))
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    batch = min(batch_size, n)

    def loss_fn(p, idx):
        out = logits(graphdef, p, obs[idx])
        target = optax.smooth_labels(jax.nn.one_hot(actions[idx], num_actions), label_smoothing)
        return optax.softmax_cross_entropy(out, target).mean()

    def step(carry, key):
        p, opt = carry
        idx = jax.random.randint(key, (batch,), 0, n)
        grads = jax.grad(loss_fn)(p, idx)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(k_batches, steps))
    return graphdef, params
