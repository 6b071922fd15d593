"""Value models: separate critic and shared trunk on a tiny DecoderLM — the head is a bias-free Linear(H, 1) on the
trunk's hidden states, values are causal (read at the token before each action), and the value loss trains them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.objectives.ppo import value_loss
from stepjax.rl.value_head import PolicyValueModel, ValueModel

CFG = llm_preset("tiny", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)


def _tokens(seed=0, shape=(2, 8)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 32, size=shape), jnp.int32)


def test_value_model_is_bias_free_linear_on_hidden_states_and_causal():
    critic = ValueModel(DecoderLM(CFG, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    assert critic.value_head.bias is None and critic.value_head.kernel[...].shape == (CFG.hidden_size, 1)
    tokens = _tokens()
    values = critic(tokens)
    assert values.shape == tokens.shape and values.dtype == jnp.float32
    hidden = critic.trunk.hidden_states(tokens)
    np.testing.assert_allclose(values, (hidden @ critic.value_head.kernel[...])[..., 0], rtol=1e-5, atol=1e-7)
    # V at position i is the state before action targets[i] = inputs[i + 1]: later tokens never change it.
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % 32)
    np.testing.assert_array_equal(critic(changed)[:, :5], values[:, :5])


def test_shared_trunk_returns_policy_logits_and_values():
    lm = DecoderLM(CFG, rngs=nnx.Rngs(0))
    model = PolicyValueModel(lm, rngs=nnx.Rngs(1))
    tokens = _tokens(1)
    logits, values = model(tokens)
    np.testing.assert_allclose(logits, lm(tokens), rtol=1e-6, atol=1e-6)
    assert values.shape == tokens.shape


def test_value_loss_trains_the_critic():
    critic = ValueModel(DecoderLM(CFG, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1), init_scale=0.02)
    graphdef, params, rest = nnx.split(critic, nnx.Param, ...)
    tokens = _tokens(2, (4, 8))
    returns = jnp.asarray(np.random.default_rng(2).integers(0, 2, size=(4, 1)) * np.ones((1, 8)), jnp.float32)
    mask = jnp.ones((4, 8)).at[:, :2].set(0.0)
    old = nnx.merge(graphdef, params, rest)(tokens)
    tx = optax.adam(3e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss(p):
            return value_loss(nnx.merge(graphdef, p, rest)(tokens), old, returns, mask, value_clip=None)["value"].value

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    first = None
    for _ in range(30):
        params, opt, value = step(params, opt)
        first = value if first is None else first
    assert float(value) < 0.2 * float(first)
