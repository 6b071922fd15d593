# ruff: noqa: E501  (the templates below are verbatim, long lines included)
"""Chat templates render exactly as transformers' ``apply_chat_template`` (text and token ids), on a tokenizer
trained here and two realistic templates (Llama-3.1 style with tools in the first user turn, Qwen2.5 ChatML with
tool calls)."""

import json

import jinja2
import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stepjax.data import ChatTemplateError, HFTokenizer, load_chat_template

pytestmark = pytest.mark.parity

LLAMA3 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

SPECIALS = {
    "llama3": dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>"),
    "qwen25": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
}
TEMPLATES = {"llama3": LLAMA3, "qwen25": QWEN25}
ALL_SPECIALS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Température actuelle <°C> & conditions for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TOOL_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "c"}}}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is 2 + 3?"}],
    "multi_turn": [
        {"role": "system", "content": "You are terse.  "},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one, in <b>bold</b>?"},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi! 👋", "reasoning_content": None},
    ],
    "tool_flow": [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "name": "get_weather", "content": '{"temp": 21, "sky": "clear"}'},
    ],
}


def _train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [json.dumps(c, ensure_ascii=False) for c in CONVERSATIONS.values()] + [LLAMA3, QWEN25] * 3
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=ALL_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{name: folder}`` of tokenizers saved by transformers with each template, and the transformers objects."""
    tok = _train_tokenizer()
    out = {}
    for name, template in TEMPLATES.items():
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **SPECIALS[name])
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder)
        out[name] = (folder, transformers.PreTrainedTokenizerFast.from_pretrained(folder))
    return out


def _cases():
    for name in TEMPLATES:
        for conv in CONVERSATIONS:
            for gen in (False, True):
                yield name, conv, gen


@pytest.mark.parametrize("name, conv, gen", list(_cases()))
def test_matches_transformers(folders, name, conv, gen):
    folder, hf = folders[name]
    ours = HFTokenizer.from_file(folder)
    messages = CONVERSATIONS[conv]
    tools = [WEATHER_TOOL] if conv == "tool_flow" or (conv == "multi_turn" and name == "qwen25") else None
    extra = {"date_string": "01 Jan 2026"} if name == "llama3" else {}
    want = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False, **extra)
    got = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False, **extra)
    assert got == want
    want_ids = hf.apply_chat_template(
        messages, tools=tools, add_generation_prompt=gen, tokenize=True, return_dict=False, **extra
    )
    assert ours.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, **extra) == list(want_ids)
    assert len(set(want_ids) & {hf.convert_tokens_to_ids(t) for t in ALL_SPECIALS}) >= 2  # specials are single ids


def test_strftime_now_and_special_tokens(folders):
    folder, hf = folders["llama3"]
    ours = HFTokenizer.from_file(folder)
    messages = CONVERSATIONS["single_user"]
    # No date_string: the template calls strftime_now; both render today's date.
    assert ours.apply_chat_template(messages, tokenize=False) == hf.apply_chat_template(messages, tokenize=False)
    assert ours.chat_template.special_tokens["bos_token"] == "<|begin_of_text|>"
    assert ours.eos_id == hf.convert_tokens_to_ids("<|eot_id|>")


def test_continue_final_message(folders):
    folder, hf = folders["qwen25"]
    ours = HFTokenizer.from_file(folder)
    messages = [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two,"}]
    want = hf.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    assert ours.apply_chat_template(messages, continue_final_message=True, tokenize=False) == want
    assert want.endswith("One, two,")


def test_raise_exception_in_template_is_reported(folders):
    folder, hf = folders["llama3"]
    ours = HFTokenizer.from_file(folder)
    two_calls = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [TOOL_CALL, TOOL_CALL]}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="single tool-calls"):
        hf.apply_chat_template(two_calls, tokenize=False)
    with pytest.raises(ChatTemplateError, match="single tool-calls"):
        ours.apply_chat_template(two_calls, tokenize=False)


def test_named_templates_in_tokenizer_config(folders, tmp_path):
    """Legacy ``tokenizer_config.json`` with a list of named templates: ``tool_use`` is chosen when tools are
    given, ``default`` otherwise, as transformers does."""
    folder, _ = folders["qwen25"]
    (tmp_path / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True},
        "pad_token": "<|endoftext|>",
        "chat_template": [
            {"name": "default", "template": "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"},
            {"name": "tool_use", "template": QWEN25},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    ours = HFTokenizer.from_file(tmp_path)
    assert sorted(ours.chat_template.templates) == ["default", "tool_use"]
    messages = CONVERSATIONS["tool_flow"]
    for tools in (None, [WEATHER_TOOL]):
        want = hf.apply_chat_template(messages, tools=tools, tokenize=False)
        assert ours.apply_chat_template(messages, tools=tools, tokenize=False) == want
    assert ours.chat_template.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def test_sandbox_and_missing_template(tmp_path):
    template = load_chat_template(tmp_path)
    assert template is None  # no tokenizer_config.json, no chat_template.jinja
    (tmp_path / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):  # the sandbox refuses interpreter internals
        load_chat_template(tmp_path).render([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="empty"):
        load_chat_template(tmp_path).render([])
