"""Chat templates: render a conversation into the exact prompt text a Hugging Face model was trained on.

A model folder carries its template as Jinja source: ``chat_template.jinja`` (transformers >= 4.50 writes it),
named templates under ``additional_chat_templates/*.jinja``, or the ``chat_template`` entry of
``tokenizer_config.json`` (a string, or a list of ``{"name", "template"}``). Rendering follows transformers'
``apply_chat_template``: a sandboxed, immutable Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a ``{% generation %}`` block tag, ``raise_exception``, ``strftime_now``, a ``tojson``
filter that does not HTML-escape (``ensure_ascii=False``), and the tokenizer's named special tokens
(``bos_token``, ``eos_token``, ...) as variables. Templates are untrusted code, hence the sandbox.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: The tokenizer attributes transformers passes to every template (its ``special_tokens_map``).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(ValueError):
    """A template is missing, ambiguous, or raised while rendering (``raise_exception`` in the template)."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for loss masks; rendering keeps the body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _TemplateDict:
    # ``dict(...)`` inside templates, without exposing the type itself.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    # Namespaces refuse underscore attributes, which could reach interpreter internals.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached by source), in transformers' sandboxed environment."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(), namespace=_Namespace
    )
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not parse: {e} (line {e.lineno})") from e


def _plain(value: Any) -> Any:
    """Plain JSON-like data (what the sandbox may safely see); other objects become ``"<TypeName>"``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (str, bool, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return _plain(value.item())  # numpy scalars
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _normalize(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drops ``None``-valued keys (templates treat missing and None differently) and fills ``reasoning_content``
    / ``thinking`` from whichever reasoning field a message has, as transformers does."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {i} is a {type(message).__name__}; expected a dict with 'role'")
        message = {k: v for k, v in _plain(message).items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template(s) and the special-token strings its templates read.

    Args:
      templates: ``{name: jinja source}``; a single template is named ``"default"``.
      special_tokens: ``{"bos_token": "<s>", ...}`` passed to every render (see ``SPECIAL_TOKEN_NAMES``).
    """

    templates: Mapping[str, str]
    special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def source(self, name: str | None = None, *, tools: Sequence[Any] | None = None) -> str:
        """The template text: ``name`` (a template name, or Jinja source), else ``tool_use`` when tools are given
        and such a template exists, else ``default``."""
        if name is not None:
            return self.templates.get(name, name)
        if tools is not None and "tool_use" in self.templates:
            return self.templates["tool_use"]
        if "default" in self.templates:
            return self.templates["default"]
        raise ChatTemplateError(
            f"several chat templates {sorted(self.templates)} and none is named 'default'; pass template=NAME"
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        template: str | None = None,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> str:
        """The prompt text for ``messages`` (``[{"role": "user", "content": "..."}, ...]``).

        Args:
          add_generation_prompt: append the header that starts an assistant turn.
          tools: JSON-schema tool descriptions (``{"type": "function", "function": {...}}``) for templates that
            support tool calling.
          documents: retrieval documents (``{"title", "text"}``) for templates that read them.
          template: a template name or Jinja source overriding the default choice.
          continue_final_message: end the text inside the last message (for prefilling a reply), without the
            end-of-turn tokens; exclusive with ``add_generation_prompt``.
          **kwargs: extra template variables (e.g. ``enable_thinking=False``, ``date_string``); they override the
            special tokens of the same name.
        Raises:
          ChatTemplateError: an empty conversation, a bad message, or an error the template raised.
        """
        if not messages:
            raise ChatTemplateError("cannot render an empty conversation; give at least one message")
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
        chat = _normalize(messages)
        final = None
        if continue_final_message:
            final = chat[-1].get("content")
            if not isinstance(final, str):
                raise ChatTemplateError("continue_final_message needs a final message with string 'content'")
            chat[-1]["content"] = final + _CONTINUE_TAG
        variables = {**self.special_tokens, **_plain(kwargs)}
        try:
            text = compile_template(self.source(template, tools=tools)).render(
                messages=chat,
                tools=_plain(list(tools)) if tools is not None else None,
                documents=_plain(list(documents)) if documents is not None else None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"chat template raised: {e}") from e
        if final is not None:
            tag = _CONTINUE_TAG.strip()
            if final.strip() not in text or tag not in text:
                raise ChatTemplateError("the chat template drops part of the final message; cannot continue it")
            at = text.rindex(tag)
            text = text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text


def _token_string(value: Any) -> str | None:
    if isinstance(value, Mapping):  # serialised AddedToken: {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(folder: str | os.PathLike) -> ChatTemplate | None:
    """The chat template(s) of a Hugging Face tokenizer folder, or ``None`` if it has none.

    Sources, as transformers reads them: ``chat_template.jinja`` and ``additional_chat_templates/*.jinja`` (these
    win), else ``tokenizer_config.json``'s ``chat_template`` (a string or a list of ``{"name", "template"}``).
    Special tokens come from ``tokenizer_config.json``, completed by a legacy ``special_tokens_map.json``.
    """
    folder = Path(folder)
    config: dict[str, Any] = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ChatTemplateError(f"{config_path}: not valid JSON ({e})") from None
    templates: dict[str, str] = {}
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    if not templates:
        entry = config.get("chat_template")
        if isinstance(entry, str):
            templates["default"] = entry
        elif isinstance(entry, list):
            for item in entry:
                if not (isinstance(item, Mapping) and isinstance(item.get("name"), str) and "template" in item):
                    raise ChatTemplateError(f"{config_path}: chat_template entry {item!r} needs 'name' and 'template'")
                templates[item["name"]] = item["template"]
        elif entry is not None:
            raise ChatTemplateError(f"{config_path}: chat_template must be a string or a list, got {type(entry)}")
    if not templates:
        return None
    special = {}
    legacy_path = folder / "special_tokens_map.json"
    legacy = json.loads(legacy_path.read_text(encoding="utf-8")) if legacy_path.is_file() else {}
    for name in SPECIAL_TOKEN_NAMES:
        token = _token_string(config.get(name))
        token = token if token is not None else _token_string(legacy.get(name))
        if token is not None:
            special[name] = token
    return ChatTemplate(templates, special)
