"""Step reward model: a linear head with bias on the trunk's hidden states, causal step scores (a step's score does
not see later steps), the scorer reads the separator positions, and micro-batched training equals one batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.data.prm_encoding import encode_prm_records
from stepjax.data.tokenizers import ByteTokenizer
from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.rl.prm_model import StepRewardModel, make_step_scorer, prm_loss_fn
from stepjax.train import create_train_state, make_optimizer, make_train_step

TOK = ByteTokenizer()
CFG = llm_preset("tiny", vocab_size=259, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)
RECORDS = [
    {"prompt": "Q: 1+2+3=?\nA: ", "steps": ["1+2=3", "3+3=6"], "labels": [1, 1]},
    {"prompt": "Q: 1+2+3=?\nA: ", "steps": ["1+2=4", "4+3=7"], "labels": [0, 0]},
    {"prompt": "Q: 4+4=?\nA: ", "steps": ["4+4=9", "wait, 4+4=8"], "labels": [0, 1]},
    {"prompt": "Q: 5+1=?\nA: ", "steps": ["5+1=6"], "labels": [1]},
]


def _model(seed=0):
    return StepRewardModel(DecoderLM(CFG, rngs=nnx.Rngs(seed)), rngs=nnx.Rngs(seed + 1), init_scale=0.1)


def test_head_and_causality():
    model = _model()
    batch = encode_prm_records(RECORDS, TOK, seq_len=40)
    tokens = jnp.asarray(batch["tokens"])
    logits = model(tokens)
    assert logits.shape == tokens.shape and logits.dtype == jnp.float32
    hidden = model.trunk.hidden_states(tokens)
    want = (hidden @ model.score_head.kernel[...])[..., 0] + model.score_head.bias[...][0]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    # the first step's score of record 0 ignores the second step's text
    changed = encode_prm_records([{**RECORDS[0], "steps": ["1+2=3", "3+3=9"]}], TOK, seq_len=40)
    first = int(np.flatnonzero(batch["step_mask"][0])[0])
    np.testing.assert_allclose(model(jnp.asarray(changed["tokens"]))[0, first], logits[0, first], rtol=1e-6)


def test_scorer_reads_separator_positions():
    model = _model()
    graphdef, params, extra = nnx.split(model, nnx.Param, ...)
    # packed two or three to a row of 64 tokens, scored one row per forward (several chunks)
    score = make_step_scorer(graphdef, params, extra, TOK, seq_len=64, batch_size=1)
    got = score([(r["prompt"], r["steps"]) for r in RECORDS])
    batch = encode_prm_records(RECORDS, TOK, seq_len=40)
    probs = np.asarray(jax.nn.sigmoid(model(jnp.asarray(batch["tokens"]))))
    for i, row in enumerate(got):
        np.testing.assert_allclose(row, probs[i][batch["step_mask"][i] > 0], rtol=1e-5, atol=1e-6)
    assert [len(r) for r in got] == [2, 2, 2, 1] and score([]) == []


def test_micro_batches_equal_one_batch_and_training_fits():
    batch = {k: jnp.asarray(v) for k, v in encode_prm_records(RECORDS, TOK, seq_len=40).items()}
    opt = {"name": "adam", "learning_rate": 3e-3, "schedule": "constant", "grad_clip_norm": 0.0}
    states = []
    for micro in (1, 2):
        tx, _ = make_optimizer(opt, 10)
        graphdef, state = create_train_state(lambda r: _model(), tx, seed=0)
        step = jax.jit(make_train_step(graphdef, prm_loss_fn(), tx, loss_weights={"prm": 1.0}, num_micro_batches=micro))
        state, metrics = step(state, batch)
        states.append((state, metrics))
    (s1, m1), (s2, m2) = states
    np.testing.assert_allclose(float(m1["prm"]), float(m2["prm"]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params)
    first = float(m1["prm"])
    state = s1
    for _ in range(60):
        state, metrics = step(state, batch)
    assert float(metrics["prm"]) < 0.3 * first and float(metrics["prm/accuracy"]) == 1.0
