"""Run a recipe: ``python -m recipes.run --config configs/NAME.py:VARIANT [--config.a.b=v ...] [--workdir DIR]``.

The config names its recipe (``config.recipe``); the recipe validates the config before anything compiles, then
trains, evaluates and writes checkpoints, metrics (JSONL + TensorBoard) and plots into the workdir.
Exit status: 0 done (or preempted cleanly after saving), 2 bad input (config, data, checkpoint), 3 non-finite loss.
"""

from __future__ import annotations

import datetime
import importlib
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from recipes.cli import parse_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe config: configs/NAME.py[:VARIANT]; override fields with --config.a.b=value.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run folder (checkpoints, metrics, plots). Default: workdirs/<recipe>_<timestamp>. "
    "An existing folder resumes from its latest checkpoint.",
)


def _default_workdir(recipe: str) -> str:
    return os.path.join("workdirs", f"{recipe}_{datetime.datetime.now():%Y%m%d_%H%M%S}")


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from stepjax.data import MalformedRecordError
    from stepjax.sharding import MeshConfigError
    from stepjax.train import CheckpointError
    from stepjax.train.config_check import ConfigError

    return ConfigError, MeshConfigError, CheckpointError, MalformedRecordError, FileNotFoundError


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/lm_sft.py:tiny")
    if "recipe" not in config:
        raise app.UsageError("the config has no 'recipe' field naming the recipe module under recipes/")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, grain) drown the progress lines
    recipe = importlib.import_module(f"recipes.{config.recipe}")
    workdir = _WORKDIR.value or _default_workdir(config.recipe)
    try:
        recipe.validate(config)
        result = recipe.run(config, workdir)
    except _bad_input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


def _parse_flags(argv: list[str]) -> list[str]:
    """Flag parser for ``app.run``: a misspelt ``--config.x.y`` is one clear line, not a traceback."""
    try:
        return parse_flags(argv)
    except (AttributeError, KeyError) as err:  # ml_collections: unknown field in an override
        hint = re.search(r'Did you mean "[^"]+"', str(err))
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        print(f"error: unknown config key among {bad}" + (f"; {hint.group(0)}?" if hint else ""), file=sys.stderr)
        sys.exit(2)


def entry() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    entry()
