"""Hugging Face <-> stepjax weight names for the Llama family (Llama 2/3, Qwen2/2.5, Qwen3).

Pure conversions between a Hugging Face state dict (``{"model.layers.0.self_attn.q_proj.weight": np.ndarray}``) and
the nested dict of a ``DecoderLM``'s parameters (``{"layers": {0: {"attn": {"q_proj": {"kernel": ...}}}}}``, the
structure of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``). No file I/O: ``stepjax.interop`` reads safetensors
and calls these.

One key table serves all three families; a row applies when the model built from the config has that parameter,
so the config decides which tensors are expected (``qkv_bias`` -> Qwen2 biases, ``qk_norm`` -> Qwen3 norms,
``tie_embeddings`` -> no ``lm_head``). ``config_from_hf`` holds what differs between families.

Layouts: torch ``Linear.weight`` is ``[out, in]``; stepjax kernels are ``[in, out]`` with heads split out:
``q/k/v_proj.kernel [D, N, H]``, ``o_proj.kernel [N, H, D]``, ``mlp.*.kernel [in, out]``, ``lm_head.kernel [D, V]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from stepjax.models.llm.config import LLMConfig
from stepjax.models.llm.model import DecoderLM
from stepjax.nn.positions import rope_inv_freq

Path = tuple[str | int, ...]
Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
    """How one tensor changes layout. Each function gets the array and the stepjax (per-layer) shape.

    ``transposed``: the stepjax array, viewed as ``hf_shape[::-1]``, is the transpose of the Hugging Face array
    (else it is the Hugging Face array reshaped). Streaming loaders use it to write Hugging Face rows straight
    into a stepjax-layout buffer: ``dest.reshape(hf_shape[::-1]).T`` is a Hugging Face-shaped view of ``dest``.
    """

    to_stepjax: Callable[[np.ndarray, Shape], np.ndarray]
    to_hf: Callable[[np.ndarray, Shape], np.ndarray]
    hf_shape: Callable[[Shape], Shape]
    transposed: bool = False

    def hf_view(self, dest: np.ndarray) -> np.ndarray:
        """A Hugging Face-shaped view of ``dest`` (a contiguous array in the stepjax per-layer layout)."""
        hf_shape = self.hf_shape(dest.shape)
        return dest.reshape(hf_shape[::-1]).T if self.transposed else dest.reshape(hf_shape)


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(lambda a, s: a, lambda a, s: a, lambda s: s),
    # Linear [out, in] <-> kernel [in, out].
    "transpose": Transform(lambda a, s: a.T, lambda a, s: a.T, lambda s: s[::-1], transposed=True),
    # q/k/v: Linear [N*H, D] <-> kernel [D, N, H] (head n occupies rows n*H .. n*H+H-1).
    "split_heads_in": Transform(
        lambda a, s: a.T.reshape(s),
        lambda a, s: a.reshape(s[0], -1).T,
        lambda s: (s[1] * s[2], s[0]),
        transposed=True,
    ),
    # q/k/v bias: [N*H] <-> [N, H].
    "split_heads_bias": Transform(lambda a, s: a.reshape(s), lambda a, s: a.reshape(-1), lambda s: (s[0] * s[1],)),
    # o: Linear [D, N*H] <-> kernel [N, H, D].
    "split_heads_out": Transform(
        lambda a, s: a.T.reshape(s),
        lambda a, s: a.reshape(-1, s[-1]).T,
        lambda s: (s[-1], s[0] * s[1]),
        transposed=True,
    ),
}

#: ``(Hugging Face name, stepjax path, transform)``. ``{i}`` is the layer index; ``layers/{i}`` paths are stacked on
#: a leading axis when ``cfg.scan_layers``. Rows whose stepjax path the model lacks are skipped.
KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("model.embed_tokens.weight", "embed/embedding", "identity"),
    ("model.norm.weight", "final_norm/scale", "identity"),
    ("lm_head.weight", "lm_head/kernel", "transpose"),
    ("model.layers.{i}.input_layernorm.weight", "layers/{i}/input_norm/scale", "identity"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers/{i}/post_attn_norm/scale", "identity"),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers/{i}/attn/q_proj/kernel", "split_heads_in"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers/{i}/attn/k_proj/kernel", "split_heads_in"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers/{i}/attn/v_proj/kernel", "split_heads_in"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers/{i}/attn/o_proj/kernel", "split_heads_out"),
    # Qwen2/2.5: biases on q, k, v (not o).
    ("model.layers.{i}.self_attn.q_proj.bias", "layers/{i}/attn/q_proj/bias", "split_heads_bias"),
    ("model.layers.{i}.self_attn.k_proj.bias", "layers/{i}/attn/k_proj/bias", "split_heads_bias"),
    ("model.layers.{i}.self_attn.v_proj.bias", "layers/{i}/attn/v_proj/bias", "split_heads_bias"),
    # Qwen3: RMSNorm over head_dim on q and k, before RoPE.
    ("model.layers.{i}.self_attn.q_norm.weight", "layers/{i}/attn/q_norm/scale", "identity"),
    ("model.layers.{i}.self_attn.k_norm.weight", "layers/{i}/attn/k_norm/scale", "identity"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers/{i}/mlp/gate_proj/kernel", "transpose"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers/{i}/mlp/up_proj/kernel", "transpose"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers/{i}/mlp/down_proj/kernel", "transpose"),
)

#: Hugging Face tensors that carry no parameter (old checkpoints persisted the RoPE buffer).
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _parse_path(text: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in text.split("/"))


def _layer_param_shapes(cfg: LLMConfig) -> dict[Path, Shape]:
    """Per-layer (unstacked) parameter shapes of ``DecoderLM(cfg)``, read abstractly (no arrays allocated)."""
    abstract = nnx.eval_shape(lambda: DecoderLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0)))
    flat = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    return {path: tuple(leaf.shape) for path, leaf in _flatten(flat).items()}


def _flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _unflatten(flat: Mapping[Path, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _rows(cfg: LLMConfig, shapes: Mapping[Path, Shape]) -> list[tuple[str, Path, Transform]]:
    """The key table expanded over layers and filtered to the parameters ``DecoderLM(cfg)`` has."""
    rows = []
    for hf_name, sx_name, transform in KEY_TABLE:
        layers = range(cfg.num_layers) if "{i}" in hf_name else [None]
        for i in layers:
            path = _parse_path(sx_name.format(i=i))
            if path in shapes:
                rows.append((hf_name.format(i=i), path, TRANSFORMS[transform]))
    covered = {path for _, path, _ in rows}
    uncovered = sorted(set(shapes) - covered, key=str)
    if uncovered:
        names = ["/".join(map(str, p)) for p in uncovered]
        raise ValueError(
            f"no Hugging Face name for stepjax parameters {names}; this config has no HF Llama-family "
            "equivalent (mlp_kind must be 'swiglu', norm 'rms')"
        )
    return rows


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One Hugging Face tensor and the stepjax parameter it fills.

    ``path`` is the per-layer stepjax path (``("layers", 3, "attn", "q_proj", "kernel")``) and ``shape`` its
    per-layer shape; ``layer`` is the layer index (None outside the layer stack). With ``cfg.scan_layers`` the
    parameter lives at ``model_path(True)`` (``("layers", "attn", ...)``), stacked on a leading layer axis, and this
    tensor fills row ``layer`` of it.
    """

    hf_name: str
    path: Path
    shape: Shape
    transform: Transform
    layer: int | None

    @property
    def hf_shape(self) -> Shape:
        return self.transform.hf_shape(self.shape)

    def model_path(self, scan_layers: bool) -> Path:
        if scan_layers and self.layer is not None:
            return ("layers", *self.path[2:])
        return self.path


def tensor_mappings(cfg: LLMConfig) -> list[TensorMapping]:
    """Every Hugging Face tensor a checkpoint for ``cfg`` holds, in key-table order, without touching any array.

    Loaders and exporters iterate over it to move one tensor at a time (``stepjax.interop``). With tied embeddings
    ``lm_head.weight`` is not listed (see ``TIED_HEAD``). Raises ``ValueError`` naming parameters of ``cfg`` that
    have no Hugging Face name.
    """
    shapes = _layer_param_shapes(cfg)
    return [
        TensorMapping(hf_name, path, shapes[path], transform, path[1] if path[0] == "layers" else None)
        for hf_name, path, transform in _rows(cfg, shapes)
    ]


#: Name of the output head; a tied checkpoint may still list it (equal to ``TIED_SOURCE``).
TIED_HEAD, TIED_SOURCE = "lm_head.weight", "model.embed_tokens.weight"


def is_ignored_tensor(hf_name: str) -> bool:
    """Hugging Face tensors that carry no parameter (e.g. the RoPE ``inv_freq`` buffer of old checkpoints)."""
    return bool(_IGNORED.match(hf_name))


def _stack_layers(flat: dict[Path, Any], num_layers: int, stack: Callable[[list], Any]) -> dict[Path, Any]:
    """``layers/{i}/rest`` -> ``layers/rest`` with the layer index as a leading axis (the ``scan_layers`` layout)."""
    out = {p: v for p, v in flat.items() if p[0] != "layers"}
    rests = sorted({p[2:] for p in flat if p[0] == "layers"}, key=str)
    for rest in rests:
        out[("layers", *rest)] = stack([flat[("layers", i, *rest)] for i in range(num_layers)])
    return out


def hf_to_params(hf_state: Mapping[str, np.ndarray], cfg: LLMConfig, *, strict: bool = True) -> dict:
    """Hugging Face state dict -> nested params dict for ``DecoderLM(cfg)``.

    Args:
      hf_state: ``{hf name: array}`` (numpy, or anything ``np.asarray`` accepts), float in any precision.
      cfg: the target config (``config_from_hf`` builds it from ``config.json``).
      strict: raise on Hugging Face tensors that map to no parameter (a config/checkpoint mismatch).
    Returns:
      ``{"embed": {"embedding": [V, D]}, "layers": {0: {...}, ...}, ...}`` as numpy arrays in ``cfg.param_dtype``;
      with ``cfg.scan_layers`` the ``layers`` subtree is ``{"attn": {"q_proj": {"kernel": [L, D, N, H]}}, ...}``.
      Load it with ``load_params_into(model, params)``.
    Raises:
      ValueError: naming the missing, misshapen or unexpected Hugging Face key.
    """
    shapes = _layer_param_shapes(cfg)
    dtype = np.dtype(cfg.storage_dtype)
    flat: dict[Path, np.ndarray] = {}
    used = set()
    for hf_name, path, transform in _rows(cfg, shapes):
        if hf_name not in hf_state:
            raise ValueError(f"missing tensor {hf_name!r} (needed for stepjax {'/'.join(map(str, path))})")
        array = np.asarray(hf_state[hf_name])
        expected = transform.hf_shape(shapes[path])
        if array.shape != expected:
            raise ValueError(f"tensor {hf_name!r} has shape {array.shape}, expected {expected} for this config")
        flat[path] = np.ascontiguousarray(transform.to_stepjax(array, shapes[path])).astype(dtype)
        used.add(hf_name)
    if cfg.tie_embeddings and "lm_head.weight" in hf_state:
        # Tied checkpoints may list the head; it must be the embedding, else the config is wrong.
        head, embedding = hf_state["lm_head.weight"], hf_state["model.embed_tokens.weight"]
        if not np.array_equal(np.asarray(head), np.asarray(embedding)):
            raise ValueError(
                "tensor 'lm_head.weight' differs from 'model.embed_tokens.weight' but the config ties "
                "embeddings (tie_word_embeddings)"
            )
        used.add("lm_head.weight")
    unexpected = sorted(k for k in hf_state if k not in used and not _IGNORED.match(k))
    if strict and unexpected:
        raise ValueError(f"unexpected tensors {unexpected} (no stepjax parameter for them under this config)")
    if cfg.scan_layers:
        flat = _stack_layers(flat, cfg.num_layers, np.stack)
    return _unflatten(flat)


def params_to_hf(params: Mapping | nnx.State, cfg: LLMConfig) -> dict[str, np.ndarray]:
    """Inverse of ``hf_to_params``: nested params (or an ``nnx.State`` of ``nnx.Param``) -> ``{hf name: array}``.

    Arrays keep their dtype. With tied embeddings ``lm_head.weight`` is left out, as Hugging Face saves it.
    """
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    flat = {path: np.asarray(jax.device_get(v)) for path, v in _flatten(params).items()}
    if cfg.scan_layers:
        stacked = {p: v for p, v in flat.items() if p[0] == "layers"}
        flat = {p: v for p, v in flat.items() if p[0] != "layers"}
        for (_, *rest), value in stacked.items():
            if value.shape[0] != cfg.num_layers:
                raise ValueError(
                    f"stacked parameter layers/{'/'.join(map(str, rest))} has {value.shape[0]} layers, "
                    f"expected {cfg.num_layers}"
                )
            for i in range(cfg.num_layers):
                flat[("layers", i, *rest)] = value[i]
    shapes = _layer_param_shapes(cfg)
    out = {}
    for hf_name, path, transform in _rows(cfg, shapes):
        name = "/".join(map(str, path))
        if path not in flat:
            raise ValueError(f"missing stepjax parameter {name} (for {hf_name!r})")
        if flat[path].shape != shapes[path]:
            raise ValueError(f"stepjax parameter {name} has shape {flat[path].shape}, expected {shapes[path]}")
        out[hf_name] = np.ascontiguousarray(transform.to_hf(flat[path], shapes[path]))
    return out


def load_params_into(model: nnx.Module, params: Mapping) -> nnx.Module:
    """Writes a nested params dict (from ``hf_to_params``) into ``model``'s ``nnx.Param``s in place; returns it.

    Every parameter must be given with its exact shape; values are cast to each parameter's dtype. ``model`` may be
    abstract, which skips random initialisation entirely (the way to load a checkpoint)::

        model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
        load_params_into(model, hf_to_params(hf_state, cfg))

    On a split model (``graphdef, state = nnx.split(model, nnx.Param, ...)``) use
    ``nnx.replace_by_pure_dict(state, params)`` instead.
    """
    state = nnx.state(model, nnx.Param)
    current = _flatten(nnx.to_pure_dict(state))
    given = _flatten(params)
    missing = sorted(set(current) - set(given), key=str)
    extra = sorted(set(given) - set(current), key=str)
    if missing or extra:
        raise ValueError(
            f"params do not match the model: missing {['/'.join(map(str, p)) for p in missing]}, "
            f"unexpected {['/'.join(map(str, p)) for p in extra]}"
        )
    for path, value in given.items():
        if tuple(np.shape(value)) != tuple(current[path].shape):
            raise ValueError(
                f"parameter {'/'.join(map(str, path))} has shape {np.shape(value)}, "
                f"the model expects {current[path].shape}"
            )
    cast = {p: jax.numpy.asarray(v, dtype=current[p].dtype) for p, v in given.items()}
    nnx.replace_by_pure_dict(state, _unflatten(cast))
    nnx.update(model, state)
    return model


# ------------------------------------------------------------------------------------------ config.json

#: What each Hugging Face ``model_type`` fixes beyond the shared fields.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(qkv_bias=False, qk_norm=False),
    "qwen2": dict(qkv_bias=True, qk_norm=False),  # Qwen2 attention always has q/k/v biases
    "qwen3": dict(qkv_bias=False, qk_norm=True),
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
#: ``architectures`` entry of each family's causal-LM class.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
#: Fields that change the weights or the maths in ways stepjax does not model; a truthy value is an error.
_UNSUPPORTED = ("quantization_config", "num_experts")


def _rope_from_hf(hf_config: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(theta, scaling)`` from transformers >= 5 ``rope_parameters`` or older ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf_config.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", hf_config.get("rope_theta", 10_000.0)))
    scaling = dict(hf_config.get("rope_scaling") or params)
    scaling.pop("rope_theta", None)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    try:  # fail here, naming the field, rather than when the model is built
        rope_inv_freq(2, theta, scaling)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"config 'rope_scaling' {scaling} is not supported: {e}") from e
    return theta, scaling


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> LLMConfig:
    """``LLMConfig`` from a Hugging Face ``config.json`` dict (``model_type`` llama, qwen2 or qwen3).

    ``overrides`` set stepjax-only fields (``scan_layers``, ``remat``, ``dtype``, ...).
    Raises ``ValueError`` naming the field for unknown families and features stepjax does not model.
    """
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config 'model_type' {model_type!r} is not supported; expected one of {sorted(FAMILIES)}")
    architectures = hf_config.get("architectures") or []
    unknown = [a for a in architectures if a != ARCHITECTURES[model_type]]
    if unknown:
        raise ValueError(
            f"config 'architectures' {unknown} is not supported for model_type {model_type!r}; "
            f"expected [{ARCHITECTURES[model_type]!r}] (a decoder LM with its output head)"
        )
    for field in _UNSUPPORTED:
        if hf_config.get(field):
            raise ValueError(f"config {field!r} is not supported (got {hf_config[field]!r})")
    missing = [k for k in _REQUIRED if hf_config.get(k) is None]
    if missing:
        raise ValueError(f"config is missing {missing}")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config 'hidden_act' {hf_config['hidden_act']!r} is not supported; expected 'silu'")
    if hf_config.get("mlp_bias"):
        raise ValueError("config 'mlp_bias' = true is not supported")
    if model_type != "qwen2" and hf_config.get("attention_bias"):
        raise ValueError(f"config 'attention_bias' = true is not supported for {model_type} (it adds an o_proj bias)")
    layer_types = hf_config.get("layer_types") or []
    if hf_config.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
        raise ValueError("config 'use_sliding_window'/'layer_types': sliding-window attention is not supported")
    heads = int(hf_config["num_attention_heads"])
    theta, scaling = _rope_from_hf(hf_config)
    fields = dict(
        vocab_size=int(hf_config["vocab_size"]),
        hidden_size=int(hf_config["hidden_size"]),
        num_layers=int(hf_config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        mlp_dim=int(hf_config["intermediate_size"]),
        head_dim=int(hf_config.get("head_dim") or hf_config["hidden_size"] // heads),
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        max_seq_len=int(hf_config.get("max_position_embeddings", 2048)),
        initializer_range=float(hf_config.get("initializer_range", 0.02)),
        **FAMILIES[model_type],
    )
    return LLMConfig(**{**fields, **overrides})


def _family_of(cfg: LLMConfig) -> str:
    """The Hugging Face ``model_type`` whose weights and maths equal ``cfg``'s; ``ValueError`` naming the field."""
    fixed = {"position": "rope", "norm": "rms", "mlp_kind": "swiglu"}
    for field, want in fixed.items():
        if getattr(cfg, field) != want:
            raise ValueError(
                f"LLMConfig.{field}={getattr(cfg, field)!r} has no Hugging Face Llama-family equivalent "
                f"(needs {want!r})"
            )
    if cfg.qkv_bias and cfg.qk_norm:
        raise ValueError("LLMConfig.qkv_bias and LLMConfig.qk_norm together have no Hugging Face equivalent")
    return "qwen2" if cfg.qkv_bias else "qwen3" if cfg.qk_norm else "llama"


#: Fields ``config_to_hf`` recomputes; stale copies in ``extra`` (older spellings) are dropped.
_RECOMPUTED = ("rope_theta", "rope_scaling", "rope_parameters", "torch_dtype", "dtype", "transformers_version")


def config_to_hf(cfg: LLMConfig, extra: Mapping[str, Any] | None = None, *, dtype: str | None = None) -> dict:
    """A transformers-loadable ``config.json`` dict for ``cfg`` (inverse of ``config_from_hf``).

    Args:
      cfg: the model config; its family follows from the flags (``qkv_bias`` -> qwen2, ``qk_norm`` -> qwen3,
        else llama).
      extra: fields to keep that stepjax does not model (``bos_token_id``, ``eos_token_id``, ...), e.g. the
        original ``config.json``; every field stepjax knows is recomputed from ``cfg``.
      dtype: the stored weights' dtype name (``"bfloat16"``); default ``cfg.param_dtype``.
    Raises:
      ValueError: naming the ``LLMConfig`` field that has no Hugging Face equivalent.
    """
    model_type = _family_of(cfg)
    dtype = dtype or cfg.param_dtype
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if cfg.rope_scaling:
        scaling = dict(cfg.rope_scaling)
        kind = scaling.pop("rope_type", scaling.pop("type", "default"))
        rope = {"rope_type": kind, **scaling, "rope_theta": float(cfg.rope_theta)}
    out = {k: v for k, v in (extra or {}).items() if k not in _RECOMPUTED}
    if extra and extra.get("model_type") not in (None, model_type):
        out = {k: v for k, v in out.items() if k not in ("layer_types", "max_window_layers", "sliding_window")}
    out |= dict(
        architectures=[ARCHITECTURES[model_type]],
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.initializer_range,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=0.0,
        use_cache=True,
        rope_parameters=rope,
        # Older readers (transformers 4, most serving stacks) read these spellings.
        rope_theta=float(cfg.rope_theta),
        dtype=dtype,
        torch_dtype=dtype,
    )
    if cfg.rope_scaling:
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if model_type == "llama":
        out |= dict(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
        out |= dict(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
        out["layer_types"] = ["full_attention"] * cfg.num_layers
    if model_type == "qwen3":
        out["attention_bias"] = False
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        out.setdefault(key, None)
    return dict(sorted(out.items()))
