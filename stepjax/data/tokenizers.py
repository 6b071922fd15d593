"""Tokenizers with one small interface: ``encode(str) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``pad_id``, ``bos_id`` (may be None), ``eos_id``.

- ``ByteTokenizer``: ids 0..255 are the UTF-8 bytes, then pad/bos/eos (256, 257, 258). No files, no training.
- ``HFTokenizer``: a Hugging Face ``tokenizers`` ``tokenizer.json`` (the fast-tokenizer file of most HF models).

``encode`` never adds special tokens; example builders (``packing.sft_example``) add BOS/EOS explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stepjax.data.chat_template import ChatTemplate


@runtime_checkable
class Tokenizer(Protocol):
    """What ``stepjax.data`` needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _until_eos(ids: Iterable[int], eos_id: int | None) -> list[int]:
    out = []
    for i in ids:
        i = int(i)
        if eos_id is not None and i == eos_id:
            break
        out.append(i)
    return out


class ByteTokenizer:
    """Byte-level tokenizer: UTF-8 bytes are ids 0..255; specials pad=256, bos=257, eos=258; ``vocab_size`` 259.

    ``decode`` stops at the first EOS (``stop_at_eos=True``), drops pad/bos, and writes U+FFFD for invalid UTF-8
    (a byte sequence cut mid-character by sampling) and for ids past the vocabulary (a model whose embedding is
    padded beyond 259 rows can sample them before it is trained): visible in the text, but no crash mid-eval.
    """

    PAD, BOS, EOS = 256, 257, 258

    @property
    def vocab_size(self) -> int:
        return 259

    @property
    def pad_id(self) -> int:
        return self.PAD

    @property
    def bos_id(self) -> int:
        return self.BOS

    @property
    def eos_id(self) -> int:
        return self.EOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        ids = [int(i) for i in ids]
        if stop_at_eos:
            ids = _until_eos(ids, self.EOS)
        out, run = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                run.append(i)
            elif i not in (self.PAD, self.BOS, self.EOS):  # outside the vocabulary
                out.append(run.decode("utf-8", errors="replace") + "\ufffd")
                run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def __eq__(self, other) -> bool:
        return type(other) is ByteTokenizer

    def __hash__(self) -> int:
        return hash(ByteTokenizer)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


# Spellings of special tokens in common tokenizer.json files, tried in order when ids are not given.
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class HFTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` (from a ``tokenizer.json``) in the stepjax interface.

    Special tokens are chosen, in order: the ``bos_token``/``eos_token``/``pad_token`` arguments (token strings);
    a ``tokenizer_config.json`` beside the file (``from_file`` only); well-known spellings among the file's
    special added tokens (``<s>``, ``</s>``, ``<|endoftext|>``, ...). ``bos_id`` may stay None (e.g. Qwen);
    ``pad_id`` falls back to ``eos_id`` and then to 0 (the batch contract marks padding with segment 0 anyway).

    ``chat_template`` (``from_file`` reads it from the folder, see ``stepjax.data.chat_template``) enables
    ``apply_chat_template``.
    """

    def __init__(
        self,
        tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: ChatTemplate | None = None,
    ):
        self._tok = tokenizer
        self.chat_template = chat_template
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
        self._bos_id = self._pick("bos_token", bos_token, specials, _BOS_NAMES)
        self._eos_id = self._pick("eos_token", eos_token, specials, _EOS_NAMES)
        pad_id = self._pick("pad_token", pad_token, specials, _PAD_NAMES)
        self._pad_id = pad_id if pad_id is not None else (self._eos_id if self._eos_id is not None else 0)

    def _pick(self, what: str, given: str | None, specials: Sequence[str], names: Sequence[str]) -> int | None:
        if given is not None:
            token_id = self._tok.token_to_id(given)
            if token_id is None:
                raise ValueError(f"HFTokenizer: {what}={given!r} is not in the vocabulary")
            return token_id
        for name in names:
            if name in specials:
                return self._tok.token_to_id(name)
        return None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> HFTokenizer:
        """Loads ``path`` (a ``tokenizer.json``, or a folder holding one), with the folder's chat template if any."""
        from tokenizers import Tokenizer as _HFTokenizer

        from stepjax.data.chat_template import load_chat_template

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"HFTokenizer: no such tokenizer file: {path!r}")
        given = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
        config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
            for key, value in given.items():
                from_config = config.get(key)
                if isinstance(from_config, dict):  # {"content": "<s>", ...} form
                    from_config = from_config.get("content")
                if value is None and isinstance(from_config, str):
                    given[key] = from_config
        template = load_chat_template(os.path.dirname(path))
        return cls(_HFTokenizer.from_file(path), **given, chat_template=template)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        ids = [int(i) for i in ids]
        if stop_at_eos:
            ids = _until_eos(ids, self._eos_id)
        return self._tok.decode(ids, skip_special_tokens=True)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[int] | str:
        """The model's prompt for ``messages``, as transformers' ``apply_chat_template`` builds it: token ids
        (``tokenize=True``; the template writes the special tokens, none are added) or the text.

        ``kwargs`` go to ``ChatTemplate.render`` (``documents``, ``template``, ``continue_final_message``, template
        variables). Raises ``ValueError`` if the tokenizer has no chat template.
        """
        if self.chat_template is None:
            raise ValueError("HFTokenizer has no chat template (no chat_template.jinja or tokenizer_config.json entry)")
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"
