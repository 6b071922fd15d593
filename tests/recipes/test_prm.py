"""The prm recipe (configs/prm.py): variants validate, config mistakes are named before anything compiles, and the
``test`` variant trains both PRMs end to end and writes sane results, table and plot (the FE vs EP/EC figures come
from the ``tiny`` variant, a README command)."""

import json
import math

import pytest
from recipe_cli import load_config, run_recipe

from recipes import prm
from stepjax.train.config_check import ConfigError


def _config(variant="tiny"):
    return load_config("prm", variant)


def test_every_variant_validates():
    for variant in ("tiny", "test"):
        prm.validate(_config(variant))
    with pytest.raises(ValueError, match="unknown prm variant 'big'"):
        _config("big")


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: setattr(c.train, "totl_steps", 5), r"unknown config key 'config\.train\.totl_steps'.*total_steps"),
        (lambda c: setattr(c, "labels", ("ep_ec", "mc")), r"'config\.labels' must name some of"),
        (lambda c: setattr(c, "seeds", (1, 1)), r"'config\.seeds' must list distinct seeds"),
        (lambda c: setattr(c.data, "error_prob", 1.5), r"'config\.data\.error_prob' must be in \[0, 1\]"),
        (lambda c: setattr(c.eval, "best_of_n", (1, 128)), r"'config\.eval\.best_of_n' entries must be in \[1, "),
        (lambda c: setattr(c.eval, "aggregation", "mean"), r"'config\.eval\.aggregation' is 'mean'"),
        (lambda c: setattr(c.data, "seq_len", 40), r"'config\.data\.seq_len' \(40\) is shorter than an error-free"),
        (lambda c: setattr(c.model, "max_seq_len", 100), r"'config\.model\.max_seq_len' \(100\) is shorter"),
        (lambda c: setattr(c.train, "num_micro_batches", 5), r"'config\.train\.packed_rows'.*14 rows for 5 micro"),
        (lambda c: setattr(c.model, "num_kv_heads", 3), r"'config\.model'.*num_kv_heads"),
        (lambda c: setattr(c.data, "num_train", 0), r"'config\.data\.num_train' must be > 0"),
    ],
)
def test_config_mistakes_are_named(change, message):
    config = _config("test")
    config.unlock()
    change(config)
    with pytest.raises(ConfigError, match=message):
        prm.validate(config)


def test_bad_override_exits_with_status_2(tmp_path):
    result = run_recipe("--config", "configs/prm.py:test", "--config.eval.candidats=4", timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config.eval.candidats" in result.stderr and not (tmp_path / "x").exists()


def test_test_variant_end_to_end(tmp_path):
    config = _config("test")
    prm.validate(config)
    assert prm.run(config, str(tmp_path)) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "prm.png").stat().st_size > 10_000
    table = (tmp_path / "results.md").read_text()
    assert "A (FE labels)" in table and "B (EP/EC labels)" in table and "best_of_8" in table
    for scheme in ("first_error", "ep_ec"):
        lines = (tmp_path / "seed_0" / scheme / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [2, 4, 6]
        assert all(math.isfinite(json.loads(x)["prm"]) for x in lines)
        m = summary["mean"][scheme]
        assert all(math.isfinite(v) for v in m.values())
        assert all(0.0 <= m[k] <= 1.0 for k in m if not k.endswith("_s"))
        for n in ("1", "4", "8"):  # no selector beats the oracle on the same candidates
            assert m[f"best_of_{n}"] <= summary["oracle_pass_at_n"][n] + 1e-9
    seed = json.loads((tmp_path / "seed_0" / "results.json").read_text())
    fe, ep = seed["first_error"], seed["ep_ec"]
    assert fe["records"] == ep["records"] == 200 - fe["skipped_overlong"]
    # FE cuts incorrect chains after their first error and calls every step of a correct chain right
    assert fe["labelled_steps"] < ep["labelled_steps"] and fe["positive_rate"] > ep["positive_rate"]
    kinds = seed["train_chain_kinds"]
    assert sum(kinds.values()) == 200 and min(kinds.values()) > 0
    # best-of-1 is the generator's own accuracy: the same for both PRMs
    assert fe["best_of_n"]["1"] == ep["best_of_n"]["1"]
