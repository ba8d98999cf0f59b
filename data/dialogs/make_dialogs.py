"""Build data/dialogs/{train,valid}.jsonl: questions and answers about Python's reference
manual, made from `pydoc_data.topics` (shipped with CPython; see data/dialogs/README.md for
the licence). Deterministic for one Python version:

    python data/dialogs/make_dialogs.py            # writes beside this script
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from fst.training.demo_corpus import demo_documents

SYSTEM = "You answer questions about the Python language from its reference manual."
QUESTIONS = (
    "What does the Python reference say about {name}?",
    "Can you explain {name} in Python?",
    "How does {name} work in Python?",
    "Tell me about {name} in Python.",
    "I'm reading about {name} in Python. What should I know?",
)
FOLLOW_UPS = ("Go on.", "What else should I know?", "Can you tell me more?", "And then?")
MAX_ANSWER_CHARS = 400
TURNS = 2  # question + follow-up
PER_TOPIC = 5  # conversations per topic, from its first paragraphs (~400 in all)
VALID_EVERY = 10  # every 10th conversation is validation
_SENTENCE_END = re.compile(r"(?<=[.:!?])\s")


def answer(text: str) -> str:
    """The paragraph, cut after its last whole sentence within MAX_ANSWER_CHARS."""
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cuts = [m.start() for m in _SENTENCE_END.finditer(text) if m.start() <= MAX_ANSWER_CHARS]
    return text[: cuts[-1]] if cuts else text[:MAX_ANSWER_CHARS].rsplit(" ", 1)[0] + " ..."


def conversations() -> list[dict]:
    by_topic: dict[str, list[str]] = {}
    for doc in demo_documents():
        by_topic.setdefault(doc.meta, []).append(doc.body)
    result = []
    for name, paragraphs in sorted(by_topic.items()):
        subject = name.replace("-", " ")
        for start in range(0, min(len(paragraphs) - 1, PER_TOPIC * TURNS), TURNS):
            n = len(result)
            messages = [{"role": "system", "content": SYSTEM}] if n % 2 == 0 else []
            for turn, paragraph in enumerate(paragraphs[start : start + TURNS]):
                question = QUESTIONS[n % len(QUESTIONS)].format(name=f'"{subject}"')
                if turn:
                    question = FOLLOW_UPS[n % len(FOLLOW_UPS)]
                messages.append({"role": "user", "content": question})
                messages.append({"role": "assistant", "content": answer(paragraph)})
            result.append({"messages": messages})
    return result


def main(out_dir: Path) -> None:
    rows = conversations()
    split = {
        "train.jsonl": [r for i, r in enumerate(rows) if i % VALID_EVERY != VALID_EVERY - 1],
        "valid.jsonl": [r for i, r in enumerate(rows) if i % VALID_EVERY == VALID_EVERY - 1],
    }
    for name, records in split.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (out_dir / name).write_text(text, encoding="utf-8")
        print(f"{out_dir / name}: {len(records)} conversations, {len(text)} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
