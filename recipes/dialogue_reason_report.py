"""Summaries and figures of ``dialogue_reason`` runs: Acc(k) and AllAcc(k) of the warm-start and the PPO model.

``write_run_summary`` (one run): ``summary.json`` (the first and last held-out evaluations) and ``acc_vs_k.png``.
``write_report`` (a comparison folder holding ``<format>_seed<seed>/summary.json``): the mean and spread (std over
seeds) per format, stage and k, as ``acc_vs_k.md``, ``acc_vs_k.json`` and ``acc_vs_k.png``, and the spec's pass
check: does Acc(k) decay more slowly with k in the dialogue format than in the monologue format?

Re-run the comparison on finished runs: ``python -m recipes.dialogue_reason_report WORKDIR``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import warnings
from typing import Any

import numpy as np

STAGES = ("base", "trained")
MODES = ("greedy", "sample")


def _eval_rows(jsonl_path: str) -> list[dict[str, float]]:
    with open(jsonl_path) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


def write_run_summary(config: Any, workdir: str, *, wall_s: float | None = None) -> dict:
    """``summary.json`` of one run: ``base`` (iteration 0) and ``trained`` (last) evaluations without the ``eval/``
    prefix, the format, seed, ks, and the wall time of this invocation; and the run's ``acc_vs_k.png``."""
    rows = _eval_rows(os.path.join(workdir, "rl", "metrics.jsonl"))
    strip = lambda r: {k.removeprefix("eval/"): v for k, v in r.items()}
    summary = {
        "format": config.format,
        "seed": int(config.seed),
        "ks": [int(k) for k in config.eval.ks],
        "iterations": int(config.rl.iterations),
        "wall_s": wall_s,
        "base": strip(rows[0]),
        "trained": strip(rows[-1]),
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _plot(
        {config.format: {s: {m: _curves([summary], s, m) for m in MODES} for s in STAGES}},
        summary["ks"],
        os.path.join(workdir, "acc_vs_k.png"),
        f"dialogue_reason ({config.format}, seed {config.seed})",
    )
    return summary


def _nanmean(x: np.ndarray, axis: int | None = 0) -> np.ndarray:
    """``np.nanmean`` that stays quiet (NaN) where a column has no value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis)


def _curves(summaries: list[dict], stage: str, mode: str) -> dict[str, np.ndarray]:
    """``{metric: [seeds, len(ks)]}`` for ``acc`` and ``all_acc`` (NaN where a run lacks the value)."""
    ks = summaries[0]["ks"]
    out = {}
    for metric in ("acc", "all_acc", "format_rate"):
        out[metric] = np.array(
            [[s[stage].get(f"{mode}_{metric}_k{k}", np.nan) for k in ks] for s in summaries], np.float64
        )
    return out


def _plot(table: dict, ks: list[int], png: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=100, sharex=True, sharey=True)
    styles = {
        ("monologue", "base"): ("tab:blue", ":"),
        ("monologue", "trained"): ("tab:blue", "-"),
        ("dialogue", "base"): ("tab:orange", ":"),
        ("dialogue", "trained"): ("tab:orange", "-"),
    }
    for col, mode in enumerate(MODES):
        for row, metric in enumerate(("acc", "all_acc")):
            ax = axes[row, col]
            for fmt, stages in table.items():
                for stage in STAGES:
                    values = stages[stage][mode][metric]
                    if np.isnan(values).all():
                        continue
                    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
                    color, line = styles.get((fmt, stage), (None, "-"))
                    label = f"{fmt} {'PPO' if stage == 'trained' else 'warm start'} (n={values.shape[0]})"
                    ax.errorbar(ks, mean, yerr=std, color=color, linestyle=line, marker="o", capsize=3, label=label)
            ax.set_title(f"{'Acc(k)' if metric == 'acc' else 'AllAcc(k)'}, {mode}")
            ax.set_xticks(ks)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("k (sub-problems per prompt)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{title}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def write_report(workdir: str) -> dict:
    """Aggregates ``workdir/*/summary.json``; writes ``acc_vs_k.{md,json,png}``; returns the JSON dict."""
    summaries = []
    for path in sorted(glob.glob(os.path.join(workdir, "*", "summary.json"))):
        with open(path) as f:
            summaries.append(json.load(f))
    if not summaries:
        raise FileNotFoundError(f"no run summaries under {workdir!r} (expected <format>_seed<seed>/summary.json)")
    ks = summaries[0]["ks"]
    by_format: dict[str, list[dict]] = {}
    for s in summaries:
        by_format.setdefault(s["format"], []).append(s)
    table = {f: {st: {m: _curves(runs, st, m) for m in MODES} for st in STAGES} for f, runs in by_format.items()}
    report: dict[str, Any] = {"ks": ks, "formats": {}}
    lines = [
        "| format | stage | decode | seeds | "
        + " | ".join(f"Acc({k})" for k in ks)
        + " | "
        + " | ".join(f"AllAcc({k})" for k in ks)
        + " | Acc drop k=1->k="
        + str(ks[-1])
        + " |",
        "|" + "---|" * (5 + 2 * len(ks)),
    ]
    for fmt, stages in table.items():
        report["formats"][fmt] = {
            "seeds": [s["seed"] for s in by_format[fmt]],
            "wall_s": [s.get("wall_s") for s in by_format[fmt]],
        }
        for stage in STAGES:
            for mode in MODES:
                c = stages[stage][mode]
                acc, allacc = c["acc"], c["all_acc"]
                if np.isnan(acc).all():  # e.g. runs without sampled evaluations
                    continue
                drop = acc[:, 0] - acc[:, -1]
                with np.errstate(divide="ignore", invalid="ignore"):
                    retention = acc[:, -1] / acc[:, 0]  # Acc(k_max) / Acc(1) per seed
                entry = {
                    "acc_mean": np.nanmean(acc, 0).tolist(),
                    "acc_std": np.nanstd(acc, 0).tolist(),
                    "all_acc_mean": np.nanmean(allacc, 0).tolist(),
                    "all_acc_std": np.nanstd(allacc, 0).tolist(),
                    "format_rate_mean": _nanmean(c["format_rate"]).tolist(),
                    "acc_drop_mean": float(np.nanmean(drop)),
                    "acc_drop_std": float(np.nanstd(drop)),
                    "retention_mean": float(_nanmean(np.where(np.isfinite(retention), retention, np.nan), None)),
                }
                report["formats"][fmt][f"{stage}/{mode}"] = entry
                cell = lambda m, s: f"{m:.3f} ± {s:.3f}"
                lines.append(
                    f"| {fmt} | {stage} | {mode} | {acc.shape[0]} | "
                    + " | ".join(cell(m, s) for m, s in zip(entry["acc_mean"], entry["acc_std"], strict=True))
                    + " | "
                    + " | ".join(cell(m, s) for m, s in zip(entry["all_acc_mean"], entry["all_acc_std"], strict=True))
                    + f" | {cell(entry['acc_drop_mean'], entry['acc_drop_std'])} |"
                )
    formats = report["formats"]
    if {"monologue", "dialogue"} <= set(formats):
        for stage in STAGES:
            for mode in MODES:
                if f"{stage}/{mode}" not in formats["dialogue"] or f"{stage}/{mode}" not in formats["monologue"]:
                    continue
                d, m = formats["dialogue"][f"{stage}/{mode}"], formats["monologue"][f"{stage}/{mode}"]
                report[f"pass/{stage}/{mode}"] = {
                    "dialogue_drop": d["acc_drop_mean"],
                    "monologue_drop": m["acc_drop_mean"],
                    "slower_decay_in_dialogue": bool(d["acc_drop_mean"] < m["acc_drop_mean"]),
                    "beyond_spread": bool(
                        abs(m["acc_drop_mean"] - d["acc_drop_mean"]) > d["acc_drop_std"] + m["acc_drop_std"]
                    ),
                    "dialogue_retention": d["retention_mean"],
                    "monologue_retention": m["retention_mean"],
                }
        lines.append("")
        lines.append(
            "Pass check (Acc(k) decays more slowly with k in the dialogue format; drop = Acc(1) - Acc(k_max), "
            "retention = Acc(k_max) / Acc(1), both per seed then averaged; 'beyond the seed spread' = the two drops "
            "differ, either way, by more than the sum of their standard deviations over seeds):"
        )
        for key, v in report.items():
            if key.startswith("pass/"):
                lines.append(
                    f"- {key}: drop dialogue {v['dialogue_drop']:.3f} vs monologue {v['monologue_drop']:.3f}"
                    f" -> {'holds' if v['slower_decay_in_dialogue'] else 'does not hold'}"
                    f"{' (beyond the seed spread)' if v['beyond_spread'] else ' (within the seed spread)'}; "
                    f"retention dialogue {v['dialogue_retention']:.2f} vs monologue {v['monologue_retention']:.2f}"
                )
    with open(os.path.join(workdir, "acc_vs_k.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(workdir, "acc_vs_k.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(table, ks, os.path.join(workdir, "acc_vs_k.png"), "Compound-QA: monologue vs dialogue")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m recipes.dialogue_reason_report WORKDIR")
    write_report(sys.argv[1])
