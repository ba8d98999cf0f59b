"""Fine-tuning a pretrained chat model on data/dialogs: held-out assistant-token perplexity
and three greedy answers, before vs after a short `fst-train` run.

    python -m benchmarks.quality.dialog_finetune --gguf SmolLM2-135M-Instruct.Q4_1.gguf
    python -m benchmarks.quality.dialog_finetune --model_path <HF folder> --steps 40

`--gguf` dequantises the file into a Hugging Face folder (transformers' GGUF reader) in the
work folder first; the weights are then fp32 copies of the Q4_1 values. Perplexity is
measured exactly as fst-train trains: each validation conversation rendered with the
model's own chat template (`fst.core.chat_encoding.ChatEncoder`), loss on the assistant
turns and their end-of-turn token only. Answers: greedy, up to 60 tokens, stopped at the
end-of-turn token, for the first user turn (and system message) of three validation
conversations. Writes benchmarks/results/dialogs-finetune-<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

REPO = Path(__file__).resolve().parents[2]
DIALOGS = REPO / "data" / "dialogs"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_WORK = Path(os.environ.get("FST_BENCH_CACHE", "/tmp/fst-bench")) / "dialogs"
ANSWERS = 3
ANSWER_TOKENS = 60


def hf_folder_from_gguf(gguf: Path, out: Path) -> Path:
    """A Hugging Face folder (fp32 weights, tokenizer, chat template) from a GGUF file."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    settings = {
        k: v
        for k, v in model.config.to_dict().items()
        if k not in ("quantization_config", "model_type")
    }
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain one.
    plain = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model.config.model_type, **settings)
    )
    plain.load_state_dict(model.state_dict())
    tokenizer.save_pretrained(out)
    plain.save_pretrained(out)
    return out


def load(model_path: str | None, checkpoint: Path | None):
    """(model, tokenizer, chat format) of a model folder or an fst-train checkpoint."""
    from fst.core.chat_format import ChatFormat
    from fst.core.tokenization import DocumentTokenizer
    from fst.training.dialog_data import chat_format_for

    if checkpoint is not None:
        from fst.training.checkpoint import load_checkpoint

        loaded = load_checkpoint(checkpoint)
        return loaded.model, loaded.tokenizer, ChatFormat.from_payload(loaded.info["chat"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    tokenizer = DocumentTokenizer.from_pretrained(
        model_path, document_format=False, max_body_len=2048
    )
    return model, tokenizer, chat_format_for(model_path, None, tokenizer)  # as fst-train's


def measure(model, tokenizer, chat, max_len: int) -> dict[str, Any]:
    """Assistant-token perplexity on the validation dialogs and three greedy answers."""
    import torch
    import torch.nn.functional as F

    from fst.core.chat_encoding import ChatEncoder
    from fst.core.constants import LOSS_IGNORE
    from fst.core.dialogs import Conversation, read_conversations

    encoder = ChatEncoder(tokenizer, chat, max_len)
    conversations = read_conversations(DIALOGS / "valid.jsonl")
    nll, tokens = 0.0, 0
    started = time.perf_counter()
    with torch.no_grad():
        for conversation in conversations:
            encoding = encoder.encode(conversation)
            ids = torch.tensor([encoding.token_ids])
            labels = torch.tensor(encoding.labels[1:])
            logits = model(input_ids=ids).logits[0, :-1]
            keep = labels != LOSS_IGNORE
            nll += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            tokens += int(keep.sum())
    stop = [tokenizer.token_id(t) for t in chat.end_of_turn]
    stop = [i for i in stop if i is not None] + [tokenizer.eos_token_id]
    answers = []
    for conversation in conversations[:ANSWERS]:
        first_user = next(i for i, m in enumerate(conversation.messages) if m.role == "user")
        prompt = Conversation(conversation.messages[: first_user + 1], conversation.where)
        ids = torch.tensor([encoder.prompt_ids(prompt)])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=ANSWER_TOKENS,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers.append(
            {
                "question": prompt.messages[-1].content,
                "reference": conversation.messages[first_user + 1].content,
                "answer": tokenizer.decode(out[0, ids.shape[1] :].tolist()),
            }
        )
    return {
        "assistant_tokens": tokens,
        "perplexity": math.exp(nll / tokens),
        "seconds": time.perf_counter() - started,
        "answers": answers,
    }


def fine_tune(model_path: str, work: Path, args: argparse.Namespace) -> Path:
    """fst-train on data/dialogs; returns the last checkpoint."""
    command = [
        str(Path(sys.executable).parent / "fst-train"),
        "--train_file", str(DIALOGS / "train.jsonl"),
        "--valid_file", str(DIALOGS / "valid.jsonl"),
        "--experiments_root", str(work / "experiments"),
        "--experiment_name", "dialogs-finetune",
        "--model_path", model_path,
        "--max_body_len", str(args.max_len),
        "--batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate),
        "--num_warmup_steps", str(max(1, args.steps // 10)),
        "--max_steps", str(args.steps),
        "--val_check_interval", str(args.steps),
        "--limit_val_batches", "1",
        "--num_workers", "0",
        "--num_threads", str(args.threads),
        "--seed", str(args.seed),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    folder = next(line for line in output.splitlines() if line.startswith("Experiment folder: "))
    return Path(folder.split(": ", 1)[1]) / "models" / "last.ckpt"


def markdown(report: dict[str, Any]) -> str:
    before, after = report["before"], report["after"]
    lines = [
        f"# Dialog fine-tuning of {report['model']} on data/dialogs",
        "",
        f"Command: `{report['command']}`",
        "",
        f"fst-train: {report['steps']} steps, batch {report['batch_size']}, learning rate "
        f"{report['learning_rate']}, sequences of at most {report['max_len']} tokens "
        f"(left-truncated), seed {report['seed']}; fine-tuning took {report['train_seconds']:.0f} s.",
        "",
        "| | held-out assistant-token perplexity | assistant tokens |",
        "|---|---:|---:|",
        f"| before (pretrained) | {before['perplexity']:.2f} | {before['assistant_tokens']} |",
        f"| after fine-tuning | {after['perplexity']:.2f} | {after['assistant_tokens']} |",
        "",
        "Perplexity over the assistant turns (+ end-of-turn token) of the "
        f"{report['valid_conversations']} validation conversations, rendered with the model's "
        "own chat template, exactly as fst-train computes its loss.",
        "",
        "## Greedy answers (60 tokens at most)",
    ]
    for b, a in zip(before["answers"], after["answers"], strict=True):
        lines += [
            "",
            f"**Q:** {b['question']}",
            "",
            f"- reference: {b['reference']}",
            f"- before: {b['answer']!r}",
            f"- after: {a['answer']!r}",
        ]
    machine = report["machine"]
    lines += [
        "",
        f"Machine: {machine.get('cpu', {}).get('model', '?')}, load {machine.get('load_average')}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", type=Path, help="a GGUF chat model (dequantised to fp32 first)")
    source.add_argument("--model_path", help="a Hugging Face model folder with a chat template")
    parser.add_argument("--name", default="smollm2-135m-instruct", help="results file name part")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    model_path = args.model_path or str(hf_folder_from_gguf(args.gguf, args.work / "hf-model"))
    model, tokenizer, chat = load(model_path, None)
    before = measure(model, tokenizer, chat, args.max_len)
    print(f"before: perplexity {before['perplexity']:.2f}", flush=True)
    del model
    started = time.perf_counter()
    checkpoint = fine_tune(model_path, args.work, args)
    train_seconds = time.perf_counter() - started
    model, tokenizer, chat = load(None, checkpoint)
    after = measure(model, tokenizer, chat, args.max_len)
    print(f"after: perplexity {after['perplexity']:.2f}", flush=True)
    report = {
        "model": args.name,
        "command": "python -m benchmarks.quality.dialog_finetune " + " ".join(argv or sys.argv[1:]),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_len": args.max_len,
        "seed": args.seed,
        "valid_conversations": sum(1 for line in (DIALOGS / "valid.jsonl").open() if line.strip()),
        "train_seconds": train_seconds,
        "before": before,
        "after": after,
        "machine": common.machine_description(),
    }
    common.write_report(args.out, f"dialogs-finetune-{args.name}", report, markdown(report))
    print(json.dumps({"before": before["perplexity"], "after": after["perplexity"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
