"""Model merging: weighted linear merge, task arithmetic, SLERP and TIES over parameter pytrees, plus params-only
Orbax checkpoint I/O for the ``recipes.merge`` CLI.

Every method works leaf by leaf on pytrees of identical structure, shapes and dtypes (``nnx.State``, nested dicts),
computes in float32 (float64 stays float64) and casts back to each leaf's dtype. Zero-weight models are skipped and a
single weight-1 model is returned unchanged, so weights 0 and 1 give the inputs bit for bit; 0.5/0.5 is the
elementwise mean.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepjax.train.errors import CheckpointError

METHODS = ("linear", "task_arithmetic", "slerp", "ties")
SLERP_DOT_THRESHOLD = 0.9995  # nearly parallel: fall back to lerp (mergekit's value)


class MergeError(ValueError):
    """Inputs that cannot be merged (structure, shape or dtype mismatch, bad weights)."""


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path) or "<root>"


def _leaves(trees: Sequence[Any], names: Sequence[str]) -> tuple[list[list[jax.Array]], Any]:
    """Per-tree leaf lists (same order) and the first tree's treedef; mismatches raise ``MergeError`` naming the
    parameter and the model."""
    flat0, treedef = jax.tree_util.tree_flatten_with_path(trees[0])
    ref = {_path_name(p): leaf for p, leaf in flat0}
    out = [[leaf for _, leaf in flat0]]
    for tree, name in zip(trees[1:], names[1:], strict=True):
        flat = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
        missing, extra = sorted(set(ref) - set(flat)), sorted(set(flat) - set(ref))
        if missing or extra:
            raise MergeError(
                f"{name} has different parameters than {names[0]}: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for key, leaf in ref.items():
            if np.shape(flat[key]) != np.shape(leaf) or flat[key].dtype != leaf.dtype:
                raise MergeError(
                    f"{name}: parameter {key} is {flat[key].dtype}{list(np.shape(flat[key]))}, "
                    f"expected {leaf.dtype}{list(np.shape(leaf))} as in {names[0]}"
                )
        out.append([flat[key] for key in ref])
    return out, treedef


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _weighted_sum(leaves: Sequence[jax.Array], weights: Sequence[float]) -> jax.Array:
    """``sum_i w_i x_i`` skipping zero weights; one weight-1 term returns its input as is."""
    terms = [(w, x) for w, x in zip(weights, leaves, strict=True) if w != 0.0]
    if not terms:
        return jnp.zeros_like(leaves[0])
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    dtype = leaves[0].dtype
    ct = _compute_dtype(dtype)
    acc = terms[0][0] * jnp.asarray(terms[0][1], ct)
    for w, x in terms[1:]:
        acc = acc + w * jnp.asarray(x, ct)
    return acc.astype(dtype)


def _names(n: int, names: Sequence[str] | None) -> list[str]:
    return [f"model {i}" for i in range(n)] if names is None else list(names)


def _check_weights(weights: Sequence[float], n: int, what: str) -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights for {n} {what}")
    if not all(math.isfinite(w) for w in weights):
        raise MergeError(f"weights must be finite, got {weights}")
    return weights


def linear_merge(
    trees: Sequence[Any], weights: Sequence[float], *, normalize: bool = False, names: Sequence[str] | None = None
) -> Any:
    """``sum_i w_i theta_i`` (``normalize``: weights divided by their sum). Step-Audio-AQAA merges its SFT and DPO
    checkpoints this way."""
    if not trees:
        raise MergeError("nothing to merge")
    weights = _check_weights(weights, len(trees), "models")
    if normalize:
        total = sum(weights)
        if total == 0:
            raise MergeError("normalize=True with weights summing to 0")
        weights = [w / total for w in weights]
    leaves, treedef = _leaves(trees, _names(len(trees), names))
    return jax.tree_util.tree_unflatten(treedef, [_weighted_sum(ls, weights) for ls in zip(*leaves, strict=True)])


def task_arithmetic(
    base: Any, finetuned: Sequence[Any], weights: Sequence[float], *, names: Sequence[str] | None = None
) -> Any:
    """``base + sum_i w_i (ft_i - base)`` (Ilharco et al. 2023): adds (or, with negative weights, removes) task
    vectors. Weight 0 everywhere returns ``base`` bit for bit."""
    weights = _check_weights(weights, len(finetuned), "fine-tuned models")
    leaves, treedef = _leaves([base, *finetuned], _names(len(finetuned) + 1, names))

    def one(b, *fts):
        if all(w == 0.0 for w in weights):
            return b
        ct = _compute_dtype(b.dtype)
        b32 = jnp.asarray(b, ct)
        delta = sum(w * (jnp.asarray(f, ct) - b32) for w, f in zip(weights, fts, strict=True) if w != 0.0)
        return (b32 + delta).astype(b.dtype)

    return jax.tree_util.tree_unflatten(treedef, [one(*ls) for ls in zip(*leaves, strict=True)])


def _slerp_leaf(a: jax.Array, b: jax.Array, t: float, eps: float) -> jax.Array:
    ct = _compute_dtype(a.dtype)
    a32, b32 = jnp.asarray(a, ct), jnp.asarray(b, ct)
    na, nb = jnp.linalg.norm(a32), jnp.linalg.norm(b32)
    dot = jnp.sum(a32 * b32) / jnp.maximum(na * nb, eps)
    theta = jnp.arccos(jnp.clip(dot, -1.0, 1.0))
    sin_theta = jnp.sin(theta)
    parallel = (jnp.abs(dot) > SLERP_DOT_THRESHOLD) | (na < eps) | (nb < eps)
    safe_sin = jnp.where(parallel, 1.0, sin_theta)
    s0 = jnp.where(parallel, 1.0 - t, jnp.sin((1.0 - t) * theta) / safe_sin)
    s1 = jnp.where(parallel, t, jnp.sin(t * theta) / safe_sin)
    return (s0 * a32 + s1 * b32).astype(a.dtype)


def slerp(a: Any, b: Any, t: float, *, eps: float = 1e-8, names: Sequence[str] | None = None) -> Any:
    """Spherical interpolation per tensor, treating each tensor as one vector: ``t = 0`` gives ``a``, ``t = 1`` gives
    ``b`` (bit for bit); nearly parallel (``|cos| > 0.9995``) or zero tensors fall back to linear interpolation."""
    if not 0.0 <= t <= 1.0:
        raise MergeError(f"slerp t must be in [0, 1], got {t}")
    leaves, treedef = _leaves([a, b], _names(2, names))
    if t in (0.0, 1.0):
        return jax.tree_util.tree_unflatten(treedef, leaves[int(t)])
    return jax.tree_util.tree_unflatten(treedef, [_slerp_leaf(x, y, t, eps) for x, y in zip(*leaves, strict=True)])


def _trim(delta: jax.Array, density: float) -> jax.Array:
    """Keeps the ``int(density * size)`` largest-magnitude entries (ties broken by position), zeros the rest."""
    flat = delta.reshape(-1)
    k = int(density * flat.size)
    if k >= flat.size:
        return delta
    keep = jnp.zeros(flat.shape, bool)
    if k > 0:
        keep = keep.at[jnp.argsort(-jnp.abs(flat), stable=True)[:k]].set(True)
    return jnp.where(keep, flat, 0.0).reshape(delta.shape)


def ties_merge(
    base: Any,
    finetuned: Sequence[Any],
    weights: Sequence[float] | None = None,
    *,
    density: float = 0.2,
    scale: float = 1.0,
    names: Sequence[str] | None = None,
) -> Any:
    """TIES-merging (Yadav et al. 2023), per tensor: trim each task vector ``ft_i - base`` to its top ``density``
    fraction by magnitude; elect the sign of the weighted sum of the trimmed vectors; average (weighted) only the
    entries that agree with that sign (disjoint merge); return ``base + scale * merged`` (mergekit's conventions)."""
    if not 0.0 < density <= 1.0:
        raise MergeError(f"TIES density must be in (0, 1], got {density}")
    weights = _check_weights(
        [1.0] * len(finetuned) if weights is None else weights, len(finetuned), "fine-tuned models"
    )
    leaves, treedef = _leaves([base, *finetuned], _names(len(finetuned) + 1, names))
    w = jnp.asarray(weights, jnp.float32)

    def one(b, *fts):
        ct = _compute_dtype(b.dtype)
        b32 = jnp.asarray(b, ct)
        deltas = jnp.stack([_trim(jnp.asarray(f, ct) - b32, density) for f in fts])  # [n, ...]
        wd = deltas * w.astype(ct).reshape((-1,) + (1,) * b.ndim)
        sign = jnp.sign(wd.sum(0))
        agree = (jnp.sign(wd) == sign) & (wd != 0)
        divisor = jnp.sum(jnp.where(agree, w.astype(ct).reshape((-1,) + (1,) * b.ndim), 0.0), axis=0)
        merged = jnp.sum(jnp.where(agree, wd, 0.0), axis=0) / jnp.where(jnp.abs(divisor) < 1e-8, 1.0, divisor)
        return (b32 + scale * merged).astype(b.dtype)

    return jax.tree_util.tree_unflatten(treedef, [one(*ls) for ls in zip(*leaves, strict=True)])


# --------------------------------------------------------------------------------------- checkpoint I/O

PARAMS_DIR = "params"  # the stepjax.interop folder layout: params/ (Orbax) + stepjax_config.json (+ side files)
STATE_ITEM = "state"  # a train checkpoint step (stepjax.train.checkpoint): <step>/state holds the TrainState


@dataclass(frozen=True)
class ParamsSource:
    """Where a params tree was read from: ``kind`` is ``orbax`` (a params-only Orbax directory), ``folder``
    (``params/`` + side files) or ``train`` (the ``params`` of a train checkpoint's ``state``)."""

    path: Path
    kind: str
    array_dir: Path


def _is_orbax_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "_CHECKPOINT_METADATA").is_file() or (path / "_METADATA").is_file())


def locate_params(path: str | os.PathLike) -> ParamsSource:
    """Recognises a params-only Orbax directory, an interop folder (``params/``), a train checkpoint step
    (``<step>/state``) or a train checkpoint directory (its latest step)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is not a folder")
    if (path / PARAMS_DIR).is_dir():
        return ParamsSource(path, "folder", path / PARAMS_DIR)
    if (path / STATE_ITEM).is_dir():
        return ParamsSource(path, "train", path / STATE_ITEM)
    if _is_orbax_dir(path):
        return ParamsSource(path, "orbax", path)
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / STATE_ITEM).is_dir())
    if steps:
        return ParamsSource(path, "train", path / str(steps[-1]) / STATE_ITEM)
    raise CheckpointError(
        f"{path} holds no Orbax checkpoint: expected an Orbax params directory, a folder with params/, "
        "a train checkpoint step (state/) or a train checkpoint directory (numbered steps)"
    )


def load_params(path: str | os.PathLike) -> tuple[Any, ParamsSource]:
    """Reads the parameter tree (nested dicts of arrays on the first local device) of a checkpoint."""
    import orbax.checkpoint as ocp

    source = locate_params(path)
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        meta = checkpointer.metadata(source.array_dir).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
        tree = checkpointer.restore(source.array_dir, target)
    except Exception as err:  # orbax raises many types for unreadable directories; name the checkpoint
        raise CheckpointError(
            f"cannot read the Orbax checkpoint {source.array_dir}: {type(err).__name__}: {err}"
        ) from err
    if source.kind == "train":
        if not isinstance(tree, dict) or "params" not in tree:
            raise CheckpointError(f"train checkpoint {source.array_dir} has no 'params' entry")
        tree = tree["params"]
    return tree, source


def save_params(
    path: str | os.PathLike, tree: Any, *, like: ParamsSource | None = None, overwrite: bool = False
) -> Path:
    """Writes ``tree`` as a params-only Orbax checkpoint; when ``like`` is an interop folder, in the same layout with
    its side files (config, tokenizer) copied. Written to a temporary sibling and renamed into place."""
    import orbax.checkpoint as ocp

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"output {path} exists and is not empty (pass overwrite)")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    folder = like is not None and like.kind == "folder"
    array_dir = tmp / PARAMS_DIR if folder else tmp
    if folder:
        tmp.mkdir(parents=True)
        for item in like.path.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(array_dir.absolute(), tree)
    checkpointer.wait_until_finished()
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
