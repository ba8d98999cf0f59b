"""fst-train on dialogs: the chat format of a run, encoded conversations, their DataModule.

The chat format is the model's own template (a Hugging Face folder's or GGUF file's, read by
fst-export's reader `fst.core.chat_info.read_chat_info`, or a fine-tuned checkpoint's), else fst's default, ChatML, whose two
markers are added to the tokenizer (the model's embeddings then grow, new rows at the mean
of the old ones: `fst.training.model.resize_token_embeddings`). Conversations are encoded
once by `fst.core.chat_encoding.ChatEncoder`: labels on the assistant turns only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fst.core.bundle import ChatInfo
from fst.core.chat_encoding import ChatEncoder
from fst.core.chat_format import ChatFormat, chat_format_from_info, default_chat_format
from fst.core.constants import LOSS_IGNORE
from fst.core.dialogs import Conversation, DialogError, Message
from fst.core.tokenization import DocumentTokenizer, Encoding
from fst.training.data import DocumentDataModule, EncodingDataset

logger = logging.getLogger(__name__)

CHAT_KEY = "chat"  # the ChatFormat's place in the checkpoint's fst payload


def chat_format_for(
    model_path: str, info: dict[str, Any] | None, tokenizer: DocumentTokenizer
) -> ChatFormat:
    """The run's chat format: a checkpoint's (`info` is its fst payload), else the model's
    own template (a Hugging Face folder or GGUF file, read as fst-export reads it), else
    ChatML. A template that does not compile is ignored with a warning, as at export."""
    if info is not None and info.get(CHAT_KEY):
        return ChatFormat.from_payload(info[CHAT_KEY])
    own = model_chat_info(model_path, tokenizer) if info is None else None
    if own is not None:
        return chat_format_from_info(own, tokenizer)
    return default_chat_format(tokenizer.eos_token)


def model_chat_info(model_path: str, tokenizer: DocumentTokenizer) -> ChatInfo | None:
    """`read_chat_info` of a model folder, or of a GGUF file's tokenizer saved as one."""
    import tokenizers

    from fst.core.chat_info import read_chat_info
    from fst.training.gguf_import import find_gguf, gguf_folder

    vocabulary = tokenizers.Tokenizer.from_str(tokenizer.to_json())
    gguf = find_gguf(model_path)
    if gguf is not None:
        with gguf_folder(gguf) as folder:
            return read_chat_info(folder, vocabulary, template_source="the GGUF file")
    if Path(model_path).is_dir():
        return read_chat_info(Path(model_path), vocabulary)
    return None


def add_chat_tokens(tokenizer: DocumentTokenizer, chat: ChatFormat) -> None:
    added = tokenizer.add_special_tokens(chat.markers)
    if added:
        logger.info("Chat format %s: added special tokens %s", chat.template_source, added)


def message_texts(conversations: Sequence[Conversation]) -> list[str]:
    """What a new BPE learns from: every message's content."""
    return [m.content for c in conversations for m in c.messages]


def encode_conversations(encoder: ChatEncoder, conversations: Sequence[Conversation]) -> list:
    encodings = [encoder.encode(c) for c in conversations]
    learnt = sum(sum(label != LOSS_IGNORE for label in e.labels) for e in encodings)
    if not learnt:
        raise DialogError("no assistant token survived encoding: nothing to learn")
    return encodings


def sample_prompt_ids(encoder: ChatEncoder, conversations: Sequence[Conversation]) -> list[int]:
    """generated.txt's prompt: a validation conversation up to its first assistant turn."""
    messages: list[Message] = []
    for message in conversations[0].messages:
        if message.role == "assistant":
            break
        messages.append(message)
    return encoder.prompt_ids(Conversation(tuple(messages), conversations[0].where))


class DialogDataModule(DocumentDataModule):
    """The DocumentDataModule's loaders over conversations encoded once (nothing is
    redrawn per epoch)."""

    def __init__(
        self,
        tokenizer: DocumentTokenizer,
        train: Sequence[Encoding],
        valid: Sequence[Encoding],
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, [], [], **kwargs)
        self._train_set = EncodingDataset(train)
        self._valid_set = EncodingDataset(valid)

    def train_dataset(self, epoch: int) -> EncodingDataset:
        return self._train_set

    def valid_dataset(self) -> EncodingDataset:
        return self._valid_set
