"""Recipe ``irl``: imitation from an expert's demonstrations on a JAX environment — PDEIL against GAIL, AIRL and
behaviour cloning, every algorithm trained on ``num_seeds`` seeds as one vmapped jit.

Steps: (1) an expert: PPO on the true reward (or ``expert.demos_path``, an existing demonstrations file), whose
deterministic policy collects ``expert.num_transitions`` transitions into ``<workdir>/demos.npz``, read back through
grain; (2) each algorithm in ``algorithms`` (``stepjax.irl.make_irl_train``); (3) scores: true return of the
deterministic policy at ``ppo.num_evals`` points, the normalised score ``(R - R_random) / (R_expert - R_random)``,
environment steps until a seed first reaches ``eval.threshold`` of it, the Pearson/Spearman correlation of the
learned reward with the true reward along expert and random trajectories, wall time of the seed batch (and of one
seed, ``timing.single_seed``).

Outputs in the workdir: ``demos.npz``, ``results.json``, ``results.md`` (the table), ``returns.png`` (return vs
environment steps), ``<algorithm>.json`` per finished algorithm (a rerun with the same workdir skips those).
Exit status: 0 done, 2 bad config or demonstrations file, 3 non-finite values in training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import ml_collections

from stepjax.train import config_check as cc

ALGORITHMS = ("pdeil", "gail", "airl", "bc")


def _section(cls) -> dict:
    return dataclasses.asdict(cls())  # tuples stay tuples: ml_collections overrides them from the command line


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default."""
    from stepjax.irl import AdversarialConfig, BCConfig, PDEILConfig
    from stepjax.rl.env_ppo import EnvPPOConfig

    config = ml_collections.ConfigDict()
    config.recipe = "irl"
    config.seed = 0
    config.env = dict(name="CartPole-v1", fixed_horizon=False)
    config.algorithms = ("pdeil", "gail", "airl", "bc")
    config.num_seeds = 5
    config.expert = dict(
        demos_path="",  # an existing demonstrations .npz: no expert training
        num_transitions=10_000,
        num_envs=8,
        deterministic=True,
        ppo=_section(EnvPPOConfig),
    )
    config.ppo = _section(EnvPPOConfig)
    config.pdeil = _section(PDEILConfig)
    config.gail = _section(AdversarialConfig)
    config.airl = _section(AdversarialConfig)
    config.bc = _section(BCConfig)
    config.eval = dict(threshold=0.95, random_episodes=64, correlation_envs=8, correlation_steps=500)
    config.timing = dict(single_seed=True)  # also run one seed alone (what vmap over seeds buys)
    return config


def _ppo(section):
    from stepjax.rl.env_ppo import EnvPPOConfig

    return EnvPPOConfig(**{k: tuple(v) if k == "hidden" else v for k, v in section.to_dict().items()})


def _irl_config(config, algorithm):
    from stepjax.irl import AdversarialConfig, BCConfig, PDEILConfig

    cls = {"pdeil": PDEILConfig, "gail": AdversarialConfig, "airl": AdversarialConfig, "bc": BCConfig}[algorithm]
    section = config[algorithm].to_dict()
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k]) else v for k, v in section.items()})


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys, types, choices and cross-field constraints; raises ``ConfigError`` naming the key."""
    from stepjax.rl import envs

    cc.check_against_schema(config, schema())
    cc.check_choice(config, "config.env.name", sorted(envs.ENVIRONMENTS))
    for algorithm in config.algorithms:
        if algorithm not in ALGORITHMS:
            raise cc.ConfigError(f"'config.algorithms': unknown algorithm {algorithm!r}; expected some of {ALGORITHMS}")
    if not config.algorithms:
        raise cc.ConfigError("'config.algorithms' is empty; expected some of " + str(ALGORITHMS))
    cc.check_positive(config, "config.num_seeds", "config.expert.num_transitions", "config.expert.num_envs")
    if not 0.0 < config.eval.threshold <= 1.0:
        raise cc.ConfigError(f"'config.eval.threshold' must be in (0, 1], got {config.eval.threshold}")
    for name in ("config.ppo", "config.expert.ppo"):
        try:
            _ppo(cc.get_path(config, name)).validate()
        except (ValueError, TypeError) as err:
            raise cc.ConfigError(f"'{name}': {err}") from None
    for algorithm in ALGORITHMS:
        try:
            irl = _irl_config(config, algorithm)
            if hasattr(irl, "validate"):
                irl.validate()
        except (ValueError, TypeError) as err:
            raise cc.ConfigError(f"'config.{algorithm}': {err}") from None
    env = envs.make(config.env.name, fixed_horizon=config.env.fixed_horizon)
    for algorithm in set(config.algorithms) - {"bc"}:
        if env.can_terminate and not (config.ppo.absorbing_bootstrap or config[algorithm].allow_variable_horizon):
            raise cc.ConfigError(
                f"'config.env.name' {config.env.name} ends episodes early and {algorithm} would learn a reward "
                "biased by episode length: set 'config.env.fixed_horizon' or 'config.ppo.absorbing_bootstrap' "
                f"(or 'config.{algorithm}.allow_variable_horizon')"
            )
    per_env = config.expert.num_transitions // config.expert.num_envs
    if not config.expert.demos_path and per_env < env.max_steps:
        raise cc.ConfigError(
            f"'config.expert.num_transitions' / 'config.expert.num_envs' = {per_env} steps per environment is shorter "
            f"than a {config.env.name} episode ({env.max_steps} steps): the expert return would be unknown"
        )
    if config.expert.demos_path and not os.path.isfile(config.expert.demos_path):
        raise FileNotFoundError(f"'config.expert.demos_path': no such file {config.expert.demos_path!r}")


def _expert_demos(config, workdir: str, env) -> tuple[dict, dict]:
    """Loads or makes the demonstrations; returns ``(demos, info)``."""
    import jax
    import numpy as np

    from stepjax.irl import collect_demos, load_demos, save_demos
    from stepjax.rl import env_ppo

    path = config.expert.demos_path or os.path.join(workdir, "demos.npz")
    info = {"demos_path": path}
    expert_json = os.path.join(workdir, "expert.json")
    if os.path.isfile(expert_json) and not config.expert.demos_path:
        with open(expert_json) as f:
            info.update(json.load(f))
    if not os.path.isfile(path):
        ppo = _ppo(config.expert.ppo)
        print(f"irl: training the expert (PPO, {ppo.num_updates * ppo.batch_size} steps) on {config.env.name}")
        start = time.time()
        runner, metrics = jax.jit(env_ppo.make_train(ppo, env))(jax.random.key(config.seed + 1000))
        returns = np.asarray(metrics["eval/return"])
        info.update(expert_train_s=round(time.time() - start, 1), expert_eval_returns=returns.round(2).tolist())
        demos = collect_demos(
            env,
            env_ppo.actor_critic(ppo, env),
            runner.params,
            jax.random.key(config.seed + 1001),
            config.expert.num_transitions,
            num_envs=config.expert.num_envs,
            deterministic=config.expert.deterministic,
        )
        save_demos(path, demos)
        with open(expert_json, "w") as f:
            json.dump({k: v for k, v in info.items() if k != "demos_path"}, f)
    demos = load_demos(path, env_name=config.env.name)
    if len(demos["episode_returns"]) == 0:
        raise cc.ConfigError(f"{path}: no complete expert episode among the demonstrations (collect more transitions)")
    info.update(num_transitions=len(demos["obs"]), expert_episodes=len(demos["episode_returns"]))
    return demos, info


def _train_algorithm(config, algorithm, env, eval_env, demos, random_data, scores) -> dict:
    import jax
    import numpy as np

    from stepjax.irl import evaluation, make_irl_train
    from stepjax.rl import env_ppo

    ppo = _ppo(config.ppo)
    train, model = make_irl_train(algorithm, ppo, _irl_config(config, algorithm), env, demos, eval_env=eval_env)
    batched = jax.jit(jax.vmap(train))
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    start = time.time()
    compiled = batched.lower(keys).compile()
    compile_s = time.time() - start
    start = time.time()
    out, metrics = jax.block_until_ready(compiled(keys))
    run_s = time.time() - start
    metrics = jax.device_get(metrics)
    nonfinite = sum(int((~np.isfinite(np.asarray(v))).sum()) for k, v in metrics.items() if k != "train/episode_return")
    nonfinite += int(np.isinf(np.asarray(metrics.get("train/episode_return", 0.0))).sum())
    returns = np.asarray(metrics["eval/return"], np.float64)
    steps = np.asarray(metrics["eval/env_steps"])[0]
    threshold = scores["random_return"] + config.eval.threshold * (scores["expert_return"] - scores["random_return"])
    per_seed = evaluation.steps_to_threshold(steps, returns, threshold)
    mean_curve = float(evaluation.steps_to_threshold(steps, returns.mean(0), threshold))
    final = returns[:, -1]
    result = {
        "algorithm": algorithm,
        "seeds": config.num_seeds,
        "eval_env_steps": steps.tolist(),
        "eval_returns": returns.round(3).tolist(),
        "final_return_mean": float(final.mean()),
        "final_return_std": float(final.std()),
        "final_normalized_mean": float(evaluation.normalized_score(final, **_norm(scores)).mean()),
        "threshold_return": threshold,
        "steps_to_threshold": [None if math.isinf(s) else int(s) for s in per_seed],
        "seeds_reaching_threshold": int(np.isfinite(per_seed).sum()),
        "mean_curve_steps_to_threshold": None if math.isinf(mean_curve) else int(mean_curve),
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 2),
        "nonfinite": nonfinite,
        "env_steps_per_seed": int(np.asarray(metrics["env_steps"])[0, -1]) if "env_steps" in metrics else 0,
    }
    if algorithm == "bc":
        result["grad_steps"] = np.asarray(metrics["eval/grad_steps"])[0].tolist()
    if model is not None:
        graphdef = env_ppo.actor_critic(ppo, env)
        score = jax.jit(lambda st, params, tr: model.learned_reward(st, tr, env_ppo.policy_fn(graphdef, params)))
        sets = {"expert": demos, "random": random_data}
        corr = {name: {"pearson": [], "spearman": []} for name in (*sets, "union")}
        for i in range(config.num_seeds):
            state = jax.tree.map(lambda x, i=i: x[i], out.reward_state)
            params = jax.tree.map(lambda x, i=i: x[i], out.params)
            learned = {n: np.asarray(score(state, params, evaluation.as_transition(d)))[0] for n, d in sets.items()}
            true = {n: np.asarray(d["reward"]) for n, d in sets.items()}
            learned["union"] = np.concatenate([learned["expert"], learned["random"]])
            true["union"] = np.concatenate([true["expert"], true["random"]])
            for name in corr:
                corr[name]["pearson"].append(evaluation.pearson(learned[name], true[name]))
                corr[name]["spearman"].append(evaluation.spearman(learned[name], true[name]))
        result["reward_correlation"] = corr
    if config.timing.single_seed:
        single = jax.jit(train)
        start = time.time()
        compiled_single = single.lower(keys[0]).compile()
        result["single_seed_compile_s"] = round(time.time() - start, 2)
        start = time.time()
        jax.block_until_ready(compiled_single(keys[0]))
        result["single_seed_run_s"] = round(time.time() - start, 2)
    return result


def _norm(scores: dict) -> dict:
    return {"random_return": scores["random_return"], "expert_return": scores["expert_return"]}


def _fmt_steps(x) -> str:
    return "never" if x is None else f"{x / 1000:.0f}k"


def _mean(values) -> str:
    import numpy as np

    vals = [v for v in values if v is not None and not math.isnan(v)]
    return "n/a" if not vals else f"{np.mean(vals):.2f}"


def write_table(results: dict, scores: dict, path: str) -> str:
    """Markdown table of ``results`` (per algorithm) to ``path``; returns the text."""
    import numpy as np

    lines = [
        f"{scores['env']}: expert return {scores['expert_return']:.1f}, random {scores['random_return']:.1f}; "
        f"threshold {scores['threshold']:.0%} of expert (normalised) = return {scores['threshold_return']:.1f}",
        "",
        "| algorithm | env steps / seed | final return (mean ± std) | normalised | seeds >= threshold | "
        "env steps to threshold (median seed; mean curve) | reward Pearson expert / random / both | "
        f"wall s ({scores['seeds']} seeds) | wall s (1 seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        reached = [s for s in r["steps_to_threshold"] if s is not None]
        median = (
            _fmt_steps(int(np.median(r["steps_to_threshold"])) if len(reached) * 2 > r["seeds"] else None)
            if name != "bc"
            else "0 (no env steps)"
        )
        corr = r.get("reward_correlation")
        corr_text = (
            " / ".join(_mean(corr[k]["pearson"]) for k in ("expert", "random", "union")) if corr else "n/a (no reward)"
        )
        single = r.get("single_seed_run_s")
        lines.append(
            f"| {name} | {_fmt_steps(r['env_steps_per_seed']) if name != 'bc' else '0'} | "
            f"{r['final_return_mean']:.1f} ± {r['final_return_std']:.1f} | {r['final_normalized_mean']:.2f} | "
            f"{r['seeds_reaching_threshold']}/{r['seeds']} | {median}; "
            f"{_fmt_steps(r['mean_curve_steps_to_threshold']) if name != 'bc' else '-'} | {corr_text} | "
            f"{r['run_s']:.1f} (+{r['compile_s']:.0f} compile) | "
            f"{'-' if single is None else f'{single:.1f}'} |"
        )
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot_returns(results: dict, scores: dict, path: str) -> str:
    """Return vs environment steps: the mean over seeds per algorithm with the seeds' min-max band; BC, expert and
    random as levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    colors = {"pdeil": "C0", "gail": "C1", "airl": "C2", "bc": "C3"}
    right = max((r["eval_env_steps"][-1] for r in results.values() if r["algorithm"] != "bc"), default=1)
    for name, r in results.items():
        returns = np.asarray(r["eval_returns"])
        if name == "bc":
            label = f"BC (no env steps, {r['seeds']} seeds)"
            ax.axhline(returns[:, -1].mean(), color=colors[name], ls="--", label=label)
            continue
        x = np.asarray(r["eval_env_steps"])
        ax.plot(x, returns.mean(0), color=colors.get(name), label=f"{name.upper()} ({r['seeds']} seeds, min-max)")
        ax.fill_between(x, returns.min(0), returns.max(0), color=colors.get(name), alpha=0.15)
    ax.axhline(scores["expert_return"], color="k", ls=":", label="expert")
    ax.axhline(scores["random_return"], color="grey", ls=":", label="random policy")
    ax.axhline(scores["threshold_return"], color="k", lw=0.6, alpha=0.4, label=f"{scores['threshold']:.0%} of expert")
    ax.set_xlim(0, right)
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("true return (deterministic policy)")
    ax.set_title(f"{scores['env']}: imitation from {scores['num_transitions']} expert transitions")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Expert, demonstrations, every algorithm, scores, table and plot; returns the exit status."""
    import jax
    import numpy as np

    from stepjax.irl import evaluation
    from stepjax.rl import envs

    os.makedirs(workdir, exist_ok=True)
    env = envs.make(config.env.name)
    train_env = envs.make(config.env.name, fixed_horizon=config.env.fixed_horizon)
    eval_env = envs.make(config.env.name, auto_reset=False)
    demos, info = _expert_demos(config, workdir, env)
    expert_return = float(np.mean(demos["episode_returns"]))
    random_key = jax.random.key(config.seed + 7)
    random_return = float(evaluation.random_returns(env, random_key, config.eval.random_episodes).mean())
    # Random trajectories for the reward correlation: on a fixed-horizon copy, so that after a termination the true
    # reward of the absorbing state (0) is scored too.
    random_data = evaluation.random_transitions(
        envs.make(config.env.name, fixed_horizon=True),
        jax.random.key(config.seed + 8),
        config.eval.correlation_envs,
        config.eval.correlation_steps,
    )
    scores = {
        "env": config.env.name,
        "expert_return": expert_return,
        "random_return": random_return,
        "threshold": config.eval.threshold,
        "threshold_return": random_return + config.eval.threshold * (expert_return - random_return),
        "seeds": config.num_seeds,
        "num_transitions": info["num_transitions"],
        **info,
    }
    print(
        f"irl: {config.env.name}, expert return {expert_return:.1f} ({info['expert_episodes']} episodes in "
        f"{info['num_transitions']} transitions), random {random_return:.1f}; {config.num_seeds} seeds per algorithm"
    )
    results, status = {}, 0
    for algorithm in config.algorithms:
        cache = os.path.join(workdir, f"{algorithm}.json")
        if os.path.isfile(cache):
            with open(cache) as f:
                results[algorithm] = json.load(f)
            print(f"irl: {algorithm}: reusing {cache}")
            continue
        result = _train_algorithm(config, algorithm, train_env, eval_env, demos, random_data, scores)
        results[algorithm] = result
        with open(cache, "w") as f:
            json.dump(result, f)
        print(
            f"irl: {algorithm}: final return {result['final_return_mean']:.1f} ± {result['final_return_std']:.1f} "
            f"(normalised {result['final_normalized_mean']:.2f}); seeds reaching {config.eval.threshold:.0%}: "
            f"{result['seeds_reaching_threshold']}/{config.num_seeds}; {result['run_s']:.1f} s for "
            f"{config.num_seeds} seeds (+{result['compile_s']:.1f} s compile)"
        )
        if result["nonfinite"]:
            print(f"error: {algorithm}: {result['nonfinite']} non-finite values in the training metrics")
            status = 3
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"scores": scores, "results": results}, f, indent=1)
    table = write_table(results, scores, os.path.join(workdir, "results.md"))
    png = plot_returns(results, scores, os.path.join(workdir, "returns.png"))
    print(table)
    print(f"done: {png}; workdir {workdir}")
    return status
