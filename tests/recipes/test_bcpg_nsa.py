"""The bcpg_nsa recipe (configs/bcpg_nsa.py): configs validate, bad settings are named (an unknown key too, through
the CLI), and the ``test`` variant runs end to end through the CLI — warm start, one offline dataset in the §4.3
record format, RFT / BCPG / NSA runs over two offline iterations — with finite metrics, a summary and a figure; its
barely trained pi_ref writes negatives that cannot be segmented, which are counted and named in a warning."""

import json
import math

import pytest
from recipe_cli import load_config, run_recipe

from recipes import bcpg_nsa
from stepjax.data import ByteTokenizer
from stepjax.rl.offline_data import read_offline_records
from stepjax.train.config_check import ConfigError


def _config(variant: str):
    return load_config("bcpg_nsa", variant)


def _run_cli(*args, timeout=900):
    return run_recipe(*args, timeout=timeout, compile_cache=True)


def test_variants_validate_and_plan_runs():
    for variant in ("tiny", "strong", "test"):
        bcpg_nsa.validate(_config(variant))
    with pytest.raises(ValueError, match="unknown bcpg_nsa variant"):
        _config("huge")
    config = _config("tiny")
    config.policy.nsa_betas = (0.5, 0.0, -0.5)
    assert bcpg_nsa.planned_runs(config) == [
        ("rft", "rft", 1.0),
        ("bcpg", "bcpg", 1.0),
        ("nsa_b0.5", "nsa", 0.5),
        ("nsa_b0", "nsa", 0.0),
        ("nsa_b-0.5", "nsa", -0.5),
    ]


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("methods", ("rft", "ppo"), r"config\.methods.*expected a non-empty list from"),
        ("policy.nsa_betas", (1.5,), r"config\.policy\.nsa_betas' must lie in \[-1, 1\]"),
        ("offline.samples_per_prompt", 1, r"config\.offline\.samples_per_prompt' must be >= 2"),
        ("offline.judge_flip_probs", (0.1, 1.2), r"config\.offline\.judge_flip_probs' must be in \[0, 1\]"),
        ("offline.reward_fns", ("nope",), r"config\.offline\.reward_fns.*unknown reward 'nope'"),
        ("offline.max_new_tokens", 600, r"exceeds 'config\.model\.max_seq_len'"),
        ("data.error_prob", 1.5, r"config\.data\.error_prob' must be in \[0, 1\]"),
        ("data.habit_prob", -0.1, r"config\.data\.habit_prob' must be in \[0, 1\]"),
        ("data.max_terms", 2, r"config\.data\.min_terms.*max_terms"),
        ("policy.tau", -1.0, r"config\.policy\.tau' must be >= 0"),
        ("train.seeds", (), r"config\.train\.seeds' is empty"),
        ("diagnostics.gradient_folds", 3, r"config\.diagnostics\.gradient_folds' must be an even number >= 2"),
    ],
)
def test_bad_settings_are_named(path, value, message):
    config = _config("tiny")
    section, key = path.rsplit(".", 1) if "." in path else (None, path)
    (config[section] if section else config)[key] = value
    with pytest.raises(ConfigError, match=message):
        bcpg_nsa.validate(config)


def test_unknown_config_key_is_named():
    config = _config("tiny")
    config.policy.betta = 0.5
    with pytest.raises(ConfigError, match=r"unknown config key 'config\.policy\.betta'"):
        bcpg_nsa.validate(config)
    result = _run_cli("--config", "configs/bcpg_nsa.py:test", "--config.policy.tua=0.1", "--workdir", "/nonexistent")
    assert result.returncode == 2
    assert "unknown config key" in result.stderr and "config.policy.tua" in result.stderr


def test_test_variant_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    result = _run_cli("--config", "configs/bcpg_nsa.py:test", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]

    # One offline dataset in the §4.3 format: G responses per question, per-token reference log-probs, step spans
    # only on negatives, inside the response tokens.
    config = _config("test")
    records = read_offline_records(workdir / "offline_data.jsonl")
    assert len(records) == config.offline.num_questions
    tok = ByteTokenizer()
    for record in records:
        assert len(record.responses) == config.offline.samples_per_prompt
        for response in record.responses:
            assert len(response.logp_ref) == len(response.tokens)
            assert all(v <= 0.0 and math.isfinite(v) for v in response.logp_ref)
            assert not response.steps or response.r <= 0
            text = tok.decode(response.tokens)
            for a, b, label in response.steps:
                piece = tok.decode(response.tokens[a:b])
                assert piece.strip() == piece and piece in text and label in (0, 1)

    # Negatives without readable steps are counted in the dataset's stats and named in a warning.
    meta = json.loads((workdir / "offline_data.jsonl.meta.json").read_text())
    stats = meta["stats"]
    assert stats["negatives"] == stats["labelled_negatives"] + stats["unlabelled_negatives"]
    assert stats["unlabelled_negatives"] > 0  # a 120-step pi_ref writes unreadable steps
    first = meta["unlabelled"][0]
    assert f"negative sample {first} has no step labels" in result.stderr

    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary["methods"]) == {"rft", "bcpg", "nsa_b0.5"}
    for name in summary["methods"]:
        for k in range(config.offline.iterations):
            run_dir = workdir / "runs" / f"{name}_s0" / f"iter{k}"
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            losses = [r for r in rows if "loss" in r]
            assert [r["step"] for r in losses] == [1, 2]
            assert all(math.isfinite(r["loss"]) and r["nonfinite"] == 0.0 for r in losses)
            evals = [r for r in rows if "eval/accuracy" in r]
            assert evals and all(0.0 <= r["eval/accuracy"] <= 1.0 for r in evals)
            assert math.isfinite(evals[-1]["eval/error_step_logp"])
            assert evals[-1]["eval/sample_nll"] > 0.0 and math.isfinite(evals[-1]["eval/log_ratio_to_ref"])
            if k == 0:  # step 0 is pi_ref itself
                assert evals[0]["eval/log_ratio_to_ref"] == pytest.approx(0.0, abs=1e-5)
            if k >= 1:  # resampled from the run's own policy and relabelled
                assert (workdir / "runs" / f"{name}_s0" / f"offline_iter{k}.jsonl").is_file()
        acc = summary["methods"][name]["accuracy"]
        assert math.isfinite(acc["mean"]) and len(acc["after"]) == 1
        path = summary["methods"][name]["path"]["0"]  # [log-ratio, accuracy]: pi_ref, then each iteration's end
        assert len(path) == 1 + config.offline.iterations and path[0][0] == pytest.approx(0.0, abs=1e-5)
        assert path[-1][1] == acc["after"][0]
    assert set(summary["wall_seconds"]) >= {"warm_start_s", "offline_data_s", "gradient_agreement_s", "rft_s0_s"}
    # First-step gradient agreement at pi_ref: one reliability per method, cosines in [-1, 1] (noise-corrected ones
    # are estimates and may leave it), NSA's same-data direction close to BCPG's.
    agreement = summary["first_step_gradients"]
    assert set(agreement["reliability"]) == {"rft", "bcpg", "nsa_b0.5"}
    assert all(-1.0 <= v <= 1.0 for v in agreement["same_data"].values())
    assert agreement["same_data"]["bcpg|nsa_b0.5"] > 0.5
    assert "first-step gradients at pi_ref" in result.stdout
    assert (workdir / "bcpg_nsa.png").stat().st_size > 1000
    assert "held-out accuracy (T=1)" in result.stdout and "done: summary" in result.stdout

    # A rerun that would score differently is refused up front; nothing written before is touched.
    before = (workdir / "summary.json").read_text()
    again = _run_cli("--config", "configs/bcpg_nsa.py:test", "--config.eval.temperature=0.5", "--workdir", str(workdir))
    assert again.returncode == 2 and "was scored with eval settings" in again.stderr, again.stderr[-2000:]
    assert (workdir / "summary.json").read_text() == before


def test_reference_eval_cache_follows_weights_and_eval_settings(tmp_path, monkeypatch):
    """pi_ref's held-out scores are cached per seed; a rerun with other eval settings (here the eval temperature) or
    other weights re-scores instead of reusing numbers measured under different conditions."""
    import types

    import jax.numpy as jnp

    from recipes import bcpg_nsa_runs

    calls = []

    def fake_make_eval(config, *args):
        def eval_fn(state, step):
            calls.append(config.eval.temperature)
            return {"accuracy": 0.1 * len(calls)}

        return eval_fn

    monkeypatch.setattr(bcpg_nsa_runs, "make_eval", fake_make_eval)
    config = _config("tiny")
    state = types.SimpleNamespace(params={"w": jnp.ones((3,))}, extra={})

    def score(config, state):
        return bcpg_nsa._reference_eval(config, str(tmp_path), None, None, None, None, None, state, 0)

    assert score(config, state) == {"accuracy": 0.1}
    assert score(config, state) == {"accuracy": 0.1} and calls == [1.0]  # cached
    config.eval.every = 50  # not a scoring setting: the cache stands
    assert score(config, state) == {"accuracy": 0.1} and len(calls) == 1
    config.eval.temperature = 0.7
    assert score(config, state) == {"accuracy": 0.2} and calls == [1.0, 0.7]
    other = types.SimpleNamespace(params={"w": 2 * jnp.ones((3,))}, extra={})
    assert score(config, other)["accuracy"] == pytest.approx(0.3)
    assert len(calls) == 3
    # A cache written before the current metric set (no "metrics" version) is re-scored, not reused.
    cache = tmp_path / "reference_eval_s0.json"
    stored = json.loads(cache.read_text())
    del stored["settings"]["metrics"]
    cache.write_text(json.dumps(stored))
    assert score(config, other)["accuracy"] == pytest.approx(0.4) and len(calls) == 4


def test_accuracy_by_terms_groups_prompt_major_rows_by_chain_length():
    from recipes.bcpg_nsa_runs import accuracy_by_terms

    records = [{"question": "1+2"}, {"question": "3+4+5"}, {"question": "6+7"}]
    rewards = [1, 0, 1, 1, 0, 0]  # two samples per record, record-major
    assert accuracy_by_terms(records, rewards, 2) == {"accuracy_terms2": 0.25, "accuracy_terms3": 1.0}
    assert accuracy_by_terms(records[:1], rewards[:2], 2) == {}  # one length only: nothing to break down


def test_rerun_with_other_eval_settings_is_refused_before_any_work(tmp_path):
    """A finished method run resumes without re-scoring, so a rerun that changes how held-out answers are scored
    would put old figures beside pi_ref's new ones: it is refused, naming the run folder."""
    config = _config("tiny")
    bcpg_nsa._record_run_eval_settings(config, str(tmp_path / "runs" / "bcpg_s0"))
    bcpg_nsa.check_run_eval_settings(config, str(tmp_path))  # same settings: fine
    config.eval.every = 50  # when to score, not how: fine
    bcpg_nsa.check_run_eval_settings(config, str(tmp_path))
    config.eval.temperature = 0.7
    with pytest.raises(ConfigError, match=r"runs/bcpg_s0 was scored with eval settings .*'temperature': 1\.0"):
        bcpg_nsa.check_run_eval_settings(config, str(tmp_path))
    config.train.seeds = (1,)  # another seed's runs have not been scored yet
    bcpg_nsa.check_run_eval_settings(config, str(tmp_path))


def test_paths_average_over_seeds_and_draw_a_third_panel(tmp_path):
    """``_mean_path`` averages the seeds' [log-ratio, accuracy] paths eval by eval (the shortest sets the length);
    with more than two evals the figure gains the accuracy-vs-distance panel."""
    import matplotlib.image
    import numpy as np

    paths = {"0": [[0.0, 0.5], [0.1, 0.6], [0.2, 0.7]], "1": [[0.0, 0.3], [0.3, 0.4], [0.4, 0.5], [0.5, 0.9]]}
    np.testing.assert_allclose(bcpg_nsa._mean_path(paths), [[0.0, 0.4], [0.2, 0.5], [0.3, 0.6]])
    entry = {k: {"before": [-0.1], "after": [-0.05], "mean": -0.05, "std": 0.0} for k in bcpg_nsa.SUMMARY_KEYS}
    entry["accuracy"] = {"before": [0.4], "after": [0.6], "mean": 0.6, "std": 0.01}
    methods = {"rft": dict(entry, path=paths), "bcpg": dict(entry, path=paths)}
    wide = matplotlib.image.imread(bcpg_nsa._plot(str(tmp_path), methods, 1.0))
    short = {n: dict(m, path={"0": paths["0"][:2]}) for n, m in methods.items()}
    narrow = matplotlib.image.imread(bcpg_nsa._plot(str(tmp_path), short, 1.0))
    assert wide.shape[1] == 1500 and narrow.shape[1] == 1000  # 15 vs 10 inches at 100 dpi


def test_a_stopped_method_run_maps_to_the_exit_status_and_writes_no_summary(tmp_path, monkeypatch, capsys):
    """A non-finite loss inside a method run ends the recipe with status 3 and its message; a SIGTERM stop with
    status 0 and the resume hint; neither writes a summary from unfinished runs."""
    from recipes import bcpg_nsa_runs
    from stepjax.train import NonFiniteLossError, Preempted

    config = _config("test")
    config.offline.iterations = 1
    config.diagnostics.gradient_agreement = False
    workdir = str(tmp_path)
    for error, status, message in (
        (NonFiniteLossError(2, {"loss": float("nan")}), 3, "error: non-finite loss or gradients at step 2"),
        (Preempted(1, workdir, "SIGTERM"), 0, "preempted by SIGTERM at step 1"),
    ):

        def stop(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(bcpg_nsa_runs, "train_method", stop)
        assert bcpg_nsa.run(config, workdir) == status
        assert message in capsys.readouterr().out
        assert not (tmp_path / "summary.json").exists()
