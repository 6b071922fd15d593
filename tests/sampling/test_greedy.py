"""Greedy generation, by either engine (KV cache or full recomputation), equals a step-by-step argmax over full
forward passes (written independently here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.sampling import greedy_generate


def _reference_greedy(model, prompt, steps, eos_id):
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))  # one compile per length; eager is far slower
    tokens = list(prompt)
    out = []
    for _ in range(steps):
        logits = forward(params, jnp.asarray([tokens]))
        nxt = int(jnp.argmax(logits[0, -1]))
        out.append(nxt)
        tokens.append(nxt)
        if nxt == eos_id:
            break
    return out


ENGINES = ["cache", "recompute", "auto"]


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_matches_reference_for_ragged_prompts(engine):
    cfg = llm_preset("tiny", vocab_size=32)
    model = DecoderLM(cfg, rngs=nnx.Rngs(3))
    graphdef, params = nnx.split(model)
    prompts = [[1, 5, 7], [2], [3, 4, 5, 6, 7, 8]]
    got = greedy_generate(graphdef, params, prompts, max_new_tokens=6, eos_id=None, batch_size=2, engine=engine)
    for prompt, out in zip(prompts, got, strict=True):
        assert out == _reference_greedy(model, prompt, 6, eos_id=None)


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_stops_at_eos_and_keeps_it(engine):
    cfg = llm_preset("tiny", vocab_size=32)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    free = greedy_generate(graphdef, params, [[1, 2]], max_new_tokens=8, eos_id=None)[0]
    eos = free[2]  # pretend the third generated token is EOS
    first = free.index(eos)
    got = greedy_generate(graphdef, params, [[1, 2]], max_new_tokens=8, eos_id=eos, engine=engine)[0]
    assert got == free[: first + 1]
    assert np.all(np.asarray(got[:-1]) != eos)


def test_custom_apply_uses_recomputation_and_bad_engine_is_named():
    cfg = llm_preset("tiny", vocab_size=32)
    model = DecoderLM(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    shifted = lambda m, t: m(t).at[..., 0].add(100.0)  # token 0 always wins
    assert greedy_generate(graphdef, params, [[1, 2]], max_new_tokens=3, eos_id=None, apply=shifted) == [[0, 0, 0]]
    with pytest.raises(ValueError, match="custom apply"):
        greedy_generate(graphdef, params, [[1, 2]], max_new_tokens=3, eos_id=None, apply=shifted, engine="cache")
    with pytest.raises(ValueError, match="engine must be"):
        greedy_generate(graphdef, params, [[1, 2]], max_new_tokens=3, eos_id=None, engine="beam")
