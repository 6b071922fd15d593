"""Convert checkpoints: Hugging Face folder <-> Orbax params checkpoint.

    python -m recipes.convert --from hf --src MODEL_DIR --dst CKPT_DIR [--dtype bfloat16] [--overwrite]
    python -m recipes.convert --from orbax --src CKPT_DIR --dst MODEL_DIR [--max_shard_size 5GB] [--overwrite]

``--from hf`` reads ``config.json`` + safetensors (Llama, Qwen2/2.5, Qwen3) and writes ``params/`` (Orbax),
``stepjax_config.json`` and the original ``hf_config.json``. ``--from orbax`` writes ``config.json`` + safetensors
(split by ``--max_shard_size``, with an index) that transformers loads. Tokenizer files (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``, ...) and ``generation_config.json`` are copied along. The
destination is written to a temporary sibling and renamed into place, so a failure leaves nothing behind.
Exit status: 0 done, 2 bad input (missing or malformed files, unsupported config fields, tensors that do not fit).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags, logging

from recipes.cli import parse_flags

_FROM = flags.DEFINE_enum("from", None, ["hf", "orbax"], "Source format: 'hf' (safetensors folder) or 'orbax'.")
_SRC = flags.DEFINE_string("src", None, "Source folder.")
_DST = flags.DEFINE_string("dst", None, "Destination folder (must not exist or be empty, unless --overwrite).")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16", "float16"], "Cast parameters to this dtype (default: keep)."
)
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "Bytes per safetensors file when writing 'hf'.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing non-empty destination.", allow_override=True
)  # recipes.merge defines it too
_STRICT = flags.DEFINE_bool("strict", True, "Fail on checkpoint tensors that map to no parameter.")

#: Files that travel with the weights (tokenizer, chat template, generation defaults).
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def side_files(folder: Path) -> list[Path]:
    return [folder / name for name in SIDE_FILES if (folder / name).is_file()]


def convert(
    source_format: str,
    src: str,
    dst: str,
    *,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    strict: bool = True,
) -> str:
    """Runs one conversion; returns a one-line summary. Raises the library's bad-input errors."""
    from stepjax.interop import load_hf, load_orbax_params, save_hf, save_orbax_params
    from stepjax.interop.load import CONFIG_FILE, read_json
    from stepjax.interop.orbax_io import HF_CONFIG_FILE

    src_dir = Path(src)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder")
    guess = "orbax" if (src_dir / "params").is_dir() else "hf" if (src_dir / CONFIG_FILE).is_file() else None
    if guess is not None and guess != source_format:
        raise FileNotFoundError(f"--src {src} looks like a {guess} folder, not {source_format}; use --from {guess}")
    start = time.perf_counter()
    if source_format == "hf":
        cfg, model = load_hf(src_dir, dtype=dtype, strict=strict)
        hf_config = read_json(src_dir / CONFIG_FILE)
        out = save_orbax_params(
            dst, cfg, model, hf_config=hf_config, extra_files=side_files(src_dir), overwrite=overwrite
        )
    else:
        cfg, model = load_orbax_params(src_dir)
        extra = read_json(src_dir / HF_CONFIG_FILE) if (src_dir / HF_CONFIG_FILE).is_file() else None
        out = save_hf(
            dst,
            cfg,
            model,
            dtype=dtype,
            max_shard_size=max_shard_size,
            extra_config=extra,
            extra_files=side_files(src_dir),
            overwrite=overwrite,
        )
    target = "orbax" if source_format == "hf" else "hf"
    return (
        f"converted {source_format} {src_dir} -> {target} {out} ({cfg.num_params() / 1e6:.1f}M parameters, "
        f"{dtype or cfg.param_dtype}, {time.perf_counter() - start:.1f}s)"
    )


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from stepjax.data import ChatTemplateError
    from stepjax.interop import InteropError

    return InteropError, ChatTemplateError, FileNotFoundError, FileExistsError, NotADirectoryError


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    missing = [f"--{name}" for name, flag in (("from", _FROM), ("src", _SRC), ("dst", _DST)) if flag.value is None]
    if missing:
        print(f"error: {', '.join(missing)} required, e.g. --from hf --src MODEL_DIR --dst CKPT_DIR", file=sys.stderr)
        return 2
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax INFO logs drown the summary line
    try:
        summary = convert(
            _FROM.value,
            _SRC.value,
            _DST.value,
            dtype=_DTYPE.value,
            max_shard_size=_MAX_SHARD.value,
            overwrite=_OVERWRITE.value,
            strict=_STRICT.value,
        )
    except _bad_input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def entry() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
