"""Data path: record sources, tokenizers, examples and packing, the resumable grain pipeline, synthetic tasks and
answer checking. Imports no model and no trainer."""

from stepjax.data.answers import answers_match, extract_boxed, last_boxed, normalize_answer, parse_number
from stepjax.data.arithmetic import (
    OPS,
    arithmetic_prompt,
    arithmetic_record,
    format_response,
    make_arithmetic_split,
    orz_prompt,
    problem_key,
    problem_split,
    to_orz_format,
)
from stepjax.data.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from stepjax.data.packing import (
    ROW_KEYS,
    Example,
    RowBuilder,
    empty_row,
    fit_example,
    lm_example,
    pack_examples,
    sft_example,
    stack_rows,
)
from stepjax.data.pipeline import LMBatchIterator, default_to_example, make_example_dataset, make_lm_pipeline
from stepjax.data.sources import (
    ArrayRecordSource,
    InMemorySource,
    JsonlSource,
    MalformedRecordError,
    open_source,
    write_array_record,
    write_jsonl,
)
from stepjax.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer

__all__ = [
    "OPS",
    "ROW_KEYS",
    "ArrayRecordSource",
    "ByteTokenizer",
    "ChatTemplate",
    "ChatTemplateError",
    "Example",
    "HFTokenizer",
    "InMemorySource",
    "JsonlSource",
    "LMBatchIterator",
    "MalformedRecordError",
    "RowBuilder",
    "Tokenizer",
    "answers_match",
    "arithmetic_prompt",
    "arithmetic_record",
    "default_to_example",
    "empty_row",
    "extract_boxed",
    "fit_example",
    "format_response",
    "last_boxed",
    "lm_example",
    "load_chat_template",
    "make_arithmetic_split",
    "make_example_dataset",
    "make_lm_pipeline",
    "normalize_answer",
    "open_source",
    "orz_prompt",
    "pack_examples",
    "parse_number",
    "problem_key",
    "problem_split",
    "sft_example",
    "stack_rows",
    "to_orz_format",
    "write_array_record",
    "write_jsonl",
]
