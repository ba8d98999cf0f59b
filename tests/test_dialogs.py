"""Dialog files, chat encoding with assistant-only labels, and the checkpoint's chat format.

References: transformers' `apply_chat_template` (token ids of a whole conversation) and the
message contents themselves (the label mask must decode to exactly the assistant turns).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fst.core.bundle import ChatInfo
from fst.core.chat_encoding import ChatEncoder
from fst.core.chat_format import (
    ChatFormat,
    chat_format_from_info,
    chat_info,
    default_chat_format,
)
from fst.core.chat_template import CHATML_TEMPLATE
from fst.core.constants import LOSS_IGNORE
from fst.core.dialogs import (
    Conversation,
    DialogError,
    Message,
    detect_format,
    read_conversations,
)
from fst.core.tokenization import DocumentTokenizer

REPO = Path(__file__).resolve().parents[1]
# SmolLM2-Instruct's template: a default system message when the conversation has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A mutable sequence."},
    {"role": "user", "content": "And a tuple?"},
    {"role": "assistant", "content": "An immutable one, written (1, 2)."},
]


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chatml_tokenizer(max_len: int = 512) -> tuple[DocumentTokenizer, ChatFormat]:
    tokenizer = DocumentTokenizer.gpt2(document_format=False, max_body_len=max_len)
    chat = default_chat_format(tokenizer.eos_token)
    tokenizer.add_special_tokens(chat.markers)
    return tokenizer, chat


def conversation(messages=MESSAGES) -> Conversation:
    return Conversation(tuple(Message(m["role"], m["content"]) for m in messages), "x:1")


def learnt_text(tokenizer: DocumentTokenizer, encoding) -> list[str]:
    """The labelled tokens decoded, one string per contiguous run."""
    runs, current = [], []
    for token, label in zip(encoding.token_ids, encoding.labels, strict=True):
        if label != LOSS_IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


# ---- files -------------------------------------------------------------------------------


def test_messages_file_is_read_with_its_format_detected(tmp_path):
    path = write_lines(
        tmp_path / "d.jsonl", [{"messages": MESSAGES}, "", {"messages": MESSAGES[1:3]}]
    )
    assert detect_format(path) == "messages"
    conversations = read_conversations(path)
    assert [len(c.messages) for c in conversations] == [5, 2]
    assert conversations[1].where == f"{path}:3"
    assert conversations[0].as_dicts() == MESSAGES


def test_utterances_give_one_conversation_per_persona_with_tags_in_the_system_message(tmp_path):
    record = {
        "utterances": ["Hi!", "Hello, how are you?", "Fine."],
        "persona_0": "I like cats.",
        "persona_1": "I am a doctor.",
        "tags": "friendly",
    }
    path = write_lines(tmp_path / "d.jsonl", [record])
    assert detect_format(path) == "utterances"
    first, second = read_conversations(path)
    assert first.as_dicts() == [
        {"role": "system", "content": "I like cats.\nTags: friendly"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "Fine."},
    ]
    assert second.as_dicts() == [
        {"role": "system", "content": "I am a doctor.\nTags: friendly"},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, how are you?"},
        {"role": "user", "content": "Fine."},
    ]


def test_utterances_without_persona_make_the_second_speaker_the_assistant(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"utterances": ["Hi!", "Hello."]}])
    (only,) = read_conversations(path)
    assert only.as_dicts() == [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"messages": [{"role": "user", "content": "hi"}]}], ":1: no assistant turn"),
        (
            [{"messages": MESSAGES}, {"messages": [{"role": "bot", "content": "hi"}]}],
            ":2: messages[0]: unknown role 'bot'",
        ),
        (
            [{"messages": [{"role": "assistant", "content": "  "}]}],
            ":1: messages[0]: empty content",
        ),
        ([{"messages": []}], ":1: 'messages' must be a non-empty array"),
        (['{"messages": ['], ":1: invalid JSON"),
        (
            [{"messages": MESSAGES}, {"utterances": ["a", "b"]}],
            ":2: a 'utterances' line in a 'messages' file",
        ),
        ([{"utterances": ["a"], "persona_1": "p"}], ":1: no assistant turn"),
        ([{"utterances": ["a", 3]}], ":1: utterances[1]: expected a string, got number"),
        ([{"text": "a"}], ":1: expected 'body' (documents), 'messages' or 'utterances'"),
    ],
)
def test_bad_dialog_lines_name_the_file_and_line(tmp_path, records, message):
    path = write_lines(tmp_path / "bad.jsonl", records)
    with pytest.raises(DialogError) as error:
        read_conversations(path)
    assert str(error.value).startswith(f"{path}{message}")


# ---- encoding ----------------------------------------------------------------------------


def test_full_conversation_ids_equal_transformers_apply_chat_template():
    from transformers import PreTrainedTokenizerFast

    tokenizer, chat = chatml_tokenizer()
    reference = PreTrainedTokenizerFast(tokenizer_object=tokenizer._tokenizer)
    text = reference.apply_chat_template(MESSAGES, chat_template=CHATML_TEMPLATE, tokenize=False)
    # What apply_chat_template(tokenize=True) does with the text: special tokens parsed.
    expected = reference(text, add_special_tokens=False)["input_ids"]
    ids = ChatEncoder(tokenizer, chat, 512).encode(conversation()).token_ids
    # Everything after the last assistant turn (ChatML's final newline) is dropped.
    assert ids == expected[: len(ids)] and len(expected) - len(ids) == 1
    assert tokenizer.decode(expected[len(ids) :]) == "\n"


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, SMOLLM2_TEMPLATE])
@pytest.mark.parametrize("with_system", [True, False])
def test_label_mask_is_exactly_the_assistant_turns_and_their_end_of_turn(template, with_system):
    tokenizer, chat = chatml_tokenizer()
    chat = ChatFormat(template, "test", {}, ("<|im_end|>",))
    messages = MESSAGES if with_system else MESSAGES[1:]
    encoding = ChatEncoder(tokenizer, chat, 512).encode(conversation(messages))
    expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert learnt_text(tokenizer, encoding) == expected
    rendered = chat.renderer().render(messages, add_generation_prompt=False)
    assert tokenizer.decode(encoding.token_ids, skip_special_tokens=False) == rendered[:-1]


def test_a_long_conversation_is_cut_from_the_left_keeping_the_last_turn_whole():
    tokenizer, chat = chatml_tokenizer()
    full = ChatEncoder(tokenizer, chat, 512).encode(conversation())
    max_len = len(full.token_ids) - 5  # the system message's first tokens go
    cut = ChatEncoder(tokenizer, chat, max_len).encode(conversation())
    assert cut.token_ids == full.token_ids[-max_len:] and cut.labels == full.labels[-max_len:]
    assert learnt_text(tokenizer, cut) == learnt_text(tokenizer, full)
    assert tokenizer.decode(cut.token_ids[:3]) == " briefly."


def test_a_last_turn_longer_than_the_limit_is_refused():
    tokenizer, chat = chatml_tokenizer()
    with pytest.raises(DialogError, match=r"^x:1: the last assistant turn .* more than the 12"):
        ChatEncoder(tokenizer, chat, 12).encode(conversation())


def test_a_special_token_inside_a_message_is_refused():
    tokenizer, chat = chatml_tokenizer()
    bad = [*MESSAGES[:2], {"role": "assistant", "content": "ok<|im_end|><|im_start|>system"}]
    with pytest.raises(DialogError, match="^x:1: message 2 contains the special token"):
        ChatEncoder(tokenizer, chat, 512).encode(conversation(bad))


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tokenizer, _ = chatml_tokenizer()
    # Renders only the last message: prefixes are not prefixes of the whole rendering.
    template = "{{ messages[-1]['content'] }}<|im_end|>"
    chat = ChatFormat(template, "test", {}, ("<|im_end|>",))
    with pytest.raises(DialogError, match="cannot find the assistant turns"):
        ChatEncoder(tokenizer, chat, 512).encode(conversation())


# ---- chat format: model folder, checkpoint payload, manifest ------------------------------


def test_chat_format_of_a_model_chat_section_and_back_to_the_manifest():
    tokenizer, _ = chatml_tokenizer()
    end = tokenizer.token_id("<|im_end|>")
    own = ChatInfo(
        template=SMOLLM2_TEMPLATE,
        template_source="tokenizer_config.json",
        special_tokens={"eos_token": "<|im_end|>"},
        stop_token_ids=[end],
    )
    chat = chat_format_from_info(own, tokenizer)
    assert chat.template == SMOLLM2_TEMPLATE and chat.end_of_turn == ("<|im_end|>",)
    assert chat.markers == ()
    assert ChatFormat.from_payload(json.loads(json.dumps(chat.to_payload()))) == chat
    info = chat_info(chat, tokenizer)
    assert info.stop_token_ids == [end, tokenizer.eos_token_id]
    assert info.template == own.template and info.special_tokens == own.special_tokens
