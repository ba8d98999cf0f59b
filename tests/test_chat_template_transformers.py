"""fst's chat template path against transformers' `apply_chat_template(tokenize=False)`.

Each template is given to a transformers fast tokenizer built here (no hub), the tokenizer is
saved as a model folder, and fst reads that folder as fst-export does
(`fst.core.chat_info.read_chat_info`: template, special tokens) and renders with
`fst.core.chat_template.ChatTemplate`. Both strings must be equal, and where the template
refuses a conversation (Mistral's strict alternation) both sides must refuse it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from fst.core.chat_info import read_chat_info
from fst.core.chat_template import ChatTemplate, ChatTemplateError

# SmolLM2-135M-Instruct's template, verbatim from the GGUF file's tokenizer.chat_template
# (HuggingFaceTB, Apache-2.0).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3 style: bos_token first, role headers, contents trimmed, <|eot_id|> ends a turn.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Qwen2.5 style: whitespace-control blocks, a default system prompt, tools through tojson.
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501
# Mistral style: no system role, strict user/assistant alternation (raise_exception).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

TEMPLATES = {
    "smollm2": (SMOLLM2_TEMPLATE, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}),
    "llama3": (
        LLAMA3_TEMPLATE,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    ),
    "qwen25": (QWEN25_TEMPLATE, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "mistral": (MISTRAL_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You answer in one sentence."}
CONVERSATIONS = {
    "one_user_turn": [_user("What is the capital of France?")],
    "system_and_user": [SYSTEM, _user("Name a prime number.")],
    "multi_turn": [_user("Hi!"), _assistant("Hello! How can I help?"), _user("Tell me a joke.")],
    "system_multi_turn": [SYSTEM, _user("2+2?"), _assistant("4."), _user("And 3+3?")],
    "unicode": [_user("Привет, 世界! 🚀 مرحبا — naïve café"), _assistant("¡Hola! 👋")],
    "empty_content": [_user("")],
    "ends_with_assistant": [_user("Say yes."), _assistant("Yes.")],
    "braces_and_newlines": [_user("Print {{ x }} and {% raw %}\n\n  indented\tline\n")],
    "surrounding_whitespace": [_user("   padded question?   "), _assistant("\n answer \n")],
    "special_token_text": [_user("What does <|im_end|> or </s> mean?")],
    "three_rounds": [
        _user("a"),
        _assistant("b"),
        _user("c"),
        _assistant("d"),
        _user("e"),
        _assistant("f"),
    ],  # fmt: skip
    "two_users_in_a_row": [_user("first"), _user("second")],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city — «quoted» & <escaped>?",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _hf_tokenizer(template: str, special: dict[str, str]) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(["<unk>", *sorted(set(special.values()))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **special)


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def both(request, tmp_path_factory) -> tuple[PreTrainedTokenizerFast, ChatTemplate]:
    """transformers' tokenizer, and fst's template read from the folder it saves."""
    template, special = TEMPLATES[request.param]
    hf = _hf_tokenizer(template, special)
    folder = tmp_path_factory.mktemp(f"chat-{request.param}")
    hf.save_pretrained(folder)
    info = read_chat_info(Path(folder), hf.backend_tokenizer)
    assert info is not None and info.template == template
    assert info.special_tokens == hf.special_tokens_map
    return hf, ChatTemplate(info.template, info.special_tokens)


def _render_both(hf, fst, messages, **kwargs) -> tuple[str | None, str | None]:
    """Both renderings; None for a side whose template refused the conversation."""
    try:
        expected = hf.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as e:  # transformers' raise_exception: jinja2.TemplateError
        assert "alternate" in str(e) or "roles are supported" in str(e), e
        expected = None
    try:
        actual = fst.render(messages, **kwargs)
    except ChatTemplateError as e:
        assert "refused the conversation" in str(e), e
        actual = None
    return expected, actual


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_fst_renders_as_transformers(both, name, add_generation_prompt):
    hf, fst = both
    messages = CONVERSATIONS[name]
    expected, actual = _render_both(hf, fst, messages, add_generation_prompt=add_generation_prompt)
    assert actual == expected


def test_each_template_renders_most_conversations_and_mistral_refuses_bad_ones(both):
    """The comparison above is not vacuous: the templates render, and a refusal is the
    Mistral template's alternation rule on both sides."""
    hf, fst = both
    refused = [
        name
        for name, messages in CONVERSATIONS.items()
        if _render_both(hf, fst, messages, add_generation_prompt=True)[0] is None
    ]
    if fst.source == MISTRAL_TEMPLATE:
        assert sorted(refused) == ["system_and_user", "system_multi_turn", "two_users_in_a_row"]
    else:
        assert refused == []


def test_tools_reach_the_template_as_transformers_passes_them(both):
    hf, fst = both
    messages = CONVERSATIONS["one_user_turn"]
    expected, actual = _render_both(hf, fst, messages, add_generation_prompt=True, tools=TOOLS)
    assert actual == expected
    if fst.source == QWEN25_TEMPLATE:
        assert '"name": "get_weather"' in actual and "«quoted» & <escaped>" in actual


def test_named_templates_list_uses_default(tmp_path):
    """tokenizer_config.json's list form: transformers and fst both use "default"."""
    import json

    hf = _hf_tokenizer(SMOLLM2_TEMPLATE, TEMPLATES["smollm2"][1])
    hf.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "{{ 'tools' }}"},
        {"name": "default", "template": SMOLLM2_TEMPLATE},
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    info = read_chat_info(tmp_path, hf.backend_tokenizer)
    assert info is not None and info.template == SMOLLM2_TEMPLATE
    assert info.template_source == "tokenizer_config.json"
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    messages = CONVERSATIONS["multi_turn"]
    assert ChatTemplate(info.template, info.special_tokens).render(
        messages
    ) == reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
