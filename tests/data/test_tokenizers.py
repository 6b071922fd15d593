"""Tests for stepjax/data/tokenizers.py: the byte tokenizer and the tokenizer.json wrapper (a BPE trained here)."""

import json

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from stepjax.data import ByteTokenizer, HFTokenizer, Tokenizer, sft_example

TEXTS = ["hello world", "Q: 47+85=?\nA: 132", "héllo wörld, naïve café 🙂", "tabs\tand  spaces ", ""]


def test_byte_tokenizer_round_trip_utf8():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 259 and (tok.pad_id, tok.bos_id, tok.eos_id) == (256, 257, 258)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode("é🙂")) == 2 + 4  # multi-byte characters are several ids


def test_byte_tokenizer_decode_handles_specials():
    tok = ByteTokenizer()
    ids = [tok.bos_id, *b"abc", tok.pad_id, *b"d", tok.eos_id, *b"tail"]
    assert tok.decode(ids) == "abcd"  # bos/pad dropped, stops at eos
    assert tok.decode(ids, stop_at_eos=False) == "abcdtail"
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"  # a cut UTF-8 sequence does not raise
    assert tok.decode([65, 300, 66, -1]) == "A\ufffdB\ufffd"  # ids past the vocabulary (a padded embedding)


def train_bpe(path, specials=("<pad>", "<s>", "</s>")):
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(["hello world", "hello there", "the world of words", "1+1=2", "47+85=132"] * 5, trainer)
    raw.save(str(path))
    return raw


def test_hf_tokenizer_file_loads_and_round_trips(tmp_path):
    path = tmp_path / "tokenizer.json"
    raw = train_bpe(path)
    tok = HFTokenizer.from_file(path)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    assert tok.pad_id == raw.token_to_id("<pad>")
    assert tok.bos_id == raw.token_to_id("<s>")
    assert tok.eos_id == raw.token_to_id("</s>")
    for text in TEXTS:  # byte-level BPE: unseen words and unicode round-trip too
        ids = tok.encode(text)
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
    # The merges were learned: a frequent word is fewer tokens than bytes.
    assert len(tok.encode("hello")) < len(b"hello")
    # Folder path works; decode stops at EOS and drops other specials.
    assert HFTokenizer.from_file(tmp_path).eos_id == tok.eos_id
    ids = [tok.bos_id, *tok.encode("hello"), tok.eos_id, *tok.encode("world")]
    assert tok.decode(ids) == "hello"
    ex = sft_example(tok, "Q: ", "hello")
    assert ex["tokens"][0] == tok.bos_id and ex["tokens"][-1] == tok.eos_id
    assert sum(ex["loss_mask"]) == len(tok.encode("hello")) + 1


def test_hf_tokenizer_special_token_sources(tmp_path):
    train_bpe(tmp_path / "tokenizer.json", specials=("<|endoftext|>", "<|im_end|>", "<extra>"))
    raw = RawTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer.from_file(tmp_path / "tokenizer.json")
    # Qwen-like file: no BOS; EOS found by name; pad falls back to EOS.
    assert tok.bos_id is None
    assert tok.eos_id == raw.token_to_id("<|endoftext|>") and tok.pad_id == tok.eos_id
    # Arguments override names.
    tok = HFTokenizer.from_file(tmp_path / "tokenizer.json", eos_token="<|im_end|>", bos_token="<extra>")
    assert tok.eos_id == raw.token_to_id("<|im_end|>") and tok.bos_id == raw.token_to_id("<extra>")
    # A tokenizer_config.json beside the file is read ({"content": ...} form too).
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|im_end|>"}, "pad_token": "<extra>"})
    )
    tok = HFTokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.eos_id == raw.token_to_id("<|im_end|>") and tok.pad_id == raw.token_to_id("<extra>")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer.from_file(tmp_path / "tokenizer.json", eos_token="<nope>")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        HFTokenizer.from_file(tmp_path / "missing.json")
