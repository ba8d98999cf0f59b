"""What fst-train runs: data → tokenizer → model → Lightning Trainer, inside an experiment.

`train(args, experiment)` raises; `run_training(args)` turns errors into exit codes and
one-line messages (tracebacks go to the experiment's debug log).

Multi-process training: Lightning's DDP/FSDP launcher re-runs the same command for the
other local ranks. They find rank 0's experiment folder in `FST_EXPERIMENT_DIR` and load
its `tokenizer.json` instead of creating their own, so all ranks share one folder and one
vocabulary. On other nodes (NODE_RANK > 0) set `FST_EXPERIMENT_DIR` to rank 0's folder on
a shared file system.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import transformers
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from fst.core.chat_encoding import ChatEncoder
from fst.core.chat_format import ChatFormat
from fst.core.constants import BUNDLE_TOKENIZER, CHECKPOINT_KEY
from fst.core.dialogs import DOCUMENTS, Conversation, detect_format, read_conversations
from fst.core.documents import Document, DocumentError, read_documents
from fst.core.tokenization import DocumentTokenizer
from fst.training.checkpoint import (
    CheckpointError,
    build_model_from_info,
    load_checkpoint,
    read_checkpoint,
)
from fst.training.config import GPT2_TOKENIZER_CLASS, ArgsError, TrainArgs
from fst.training.data import RELOAD_EVERY_N_EPOCHS, DocumentDataModule
from fst.training.demo_corpus import build_demo_corpus
from fst.training.dialog_data import (
    DialogDataModule,
    add_chat_tokens,
    chat_format_for,
    encode_conversations,
    message_texts,
    sample_prompt_ids,
)
from fst.training.experiment import (
    Experiment,
    create_experiment,
    experiment_logging,
    open_experiment,
)
from fst.training.gguf_import import find_gguf, gguf_tokenizer
from fst.training.lightning_module import (
    DocumentLM,
    SampleWriter,
    library_versions,
)
from fst.training.model import (
    PRESETS,
    ModelError,
    build_model,
    check_model_path,
    resize_token_embeddings,
)
from fst.training.quiet import quiet_lightning
from fst.training.sequence_ul import SequenceULConfig, SequenceULDocumentLM

logger = logging.getLogger("fst.train")

EXPERIMENT_ENV = "FST_EXPERIMENT_DIR"

# Errors caused by the user's input: exit code 2 and one line on stderr.
INPUT_ERRORS = (
    ArgsError,
    DocumentError,
    ModelError,
    CheckpointError,
    MisconfigurationException,
    FileNotFoundError,
)


@dataclass
class TrainResult:
    experiment: Experiment
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    global_step: int


def run_training(args: TrainArgs) -> int:
    """fst-train's body: 0 on success, 2 on bad input, 1 on any other failure.

    Bad input leaves no experiment folder behind (nothing was trained in it); other
    failures keep it for its debug log.
    """
    try:
        with shared_experiment(args) as experiment:
            with experiment_logging(experiment.logs_dir):
                try:
                    result = train(args, experiment)
                except INPUT_ERRORS as e:
                    logger.debug("bad input", exc_info=True)
                    error = e
                except Exception as e:
                    logger.error("training failed", exc_info=True)
                    print(
                        f"fst-train: training failed: {type(e).__name__}: {e} "
                        f"(traceback in {experiment.logs_dir / 'debug.log'})",
                        file=sys.stderr,
                    )
                    return 1
                else:
                    error = None
            if error is not None:
                discard_untrained(experiment)
                raise error
    except INPUT_ERRORS as e:
        print(f"fst-train: error: {e}", file=sys.stderr)
        return 2
    if is_rank_zero():
        print(f"Experiment folder: {experiment.dir}")
        if result.best_checkpoint:
            print(f"Best checkpoint: {result.best_checkpoint}")
    return 0


@contextmanager
def shared_experiment(args: TrainArgs) -> Iterator[Experiment]:
    """Rank 0 creates the experiment folder; the other ranks open it from FST_EXPERIMENT_DIR."""
    if not is_rank_zero():
        if EXPERIMENT_ENV not in os.environ:
            raise ArgsError(f"{EXPERIMENT_ENV} must name rank 0's experiment folder on this rank")
        yield open_experiment(os.environ[EXPERIMENT_ENV])
        return
    try:
        experiment = resumed_experiment(args) or create_experiment(args.experiments_root, args.name)
    except OSError as e:  # e.g. --experiments_root names a file
        raise ArgsError(
            f"--experiments_root {args.experiments_root}: cannot create the experiment folder "
            f"there ({e.strerror or e})"
        ) from None
    # Ranks launched by Lightning inherit our environment; restored afterwards so a later
    # run in this process gets its own folder.
    previous = os.environ.get(EXPERIMENT_ENV)
    os.environ[EXPERIMENT_ENV] = str(experiment.dir)
    try:
        yield experiment
    finally:
        if previous is None:
            del os.environ[EXPERIMENT_ENV]
        else:
            os.environ[EXPERIMENT_ENV] = previous


def discard_untrained(experiment: Experiment) -> None:
    """Remove an experiment folder no model was saved in (rank 0; a resumed experiment
    always holds its checkpoint, so it stays)."""
    models = experiment.models_dir
    if is_rank_zero() and models.is_dir() and not any(models.iterdir()):
        shutil.rmtree(experiment.dir, ignore_errors=True)


def resumed_experiment(args: TrainArgs) -> Experiment | None:
    """With --resume_from: the experiment folder the checkpoint was saved in
    (`<name>_v<N>/models/*.ckpt`), unless --resume_in_new_folder or it is not in one."""
    if not args.resume_from or args.resume_in_new_folder:
        return None
    checkpoint = Path(args.resume_from).resolve()
    if checkpoint.parent.name != "models":
        return None
    try:
        experiment = open_experiment(checkpoint.parent.parent)
    except FileNotFoundError:
        return None
    if not experiment.description_file.is_file() or not experiment.logs_dir.is_dir():
        return None  # a folder that merely looks like one
    return experiment


def is_rank_zero() -> bool:
    """True unless a launcher (Lightning, torchrun, SLURM) started us as another rank."""
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def train(args: TrainArgs, experiment: Experiment) -> TrainResult:
    """Train inside an existing experiment folder; raises on any error."""
    threads = torch.get_num_threads()
    if args.resolved_num_threads():
        torch.set_num_threads(args.resolved_num_threads())
    try:
        return _train(args, experiment)
    finally:
        torch.set_num_threads(threads)


def _train(args: TrainArgs, experiment: Experiment) -> TrainResult:
    first = is_rank_zero()  # writes the shared files
    description = {"arguments": args.to_json_dict(), "versions": library_versions()}
    if first and experiment.description_file.is_file():  # resumed in its own folder
        previous = json.loads(experiment.description_file.read_text(encoding="utf-8"))
        description["resumed"] = {"from": args.resume_from, "previous_run": previous}
        logger.info("Resuming in the checkpoint's experiment folder %s", experiment.dir)
    if first:
        experiment.write_description(description)
    logger.info("Experiment folder: %s", experiment.dir)

    train_file, valid_file = data_files(args)
    corpus = Corpus.read(train_file, valid_file)
    logger.info("%s: %d train, %d valid", corpus.kind, len(corpus.train), len(corpus.valid))

    pl.seed_everything(args.seed, workers=True, verbose=False)
    tokenizer, model, chat = tokenizer_and_model(args, train_file, experiment, corpus)
    logger.info(
        "Model: %s, %.2fM parameters, vocab %d",
        model.config.model_type,
        model.num_parameters() / 1e6,
        tokenizer.vocab_size,
    )
    if first:
        tokenizer.save(experiment.dir / BUNDLE_TOKENIZER)
        description["data"] = {
            "train_file": str(train_file),
            "valid_file": str(valid_file),
            "format": corpus.kind,
            f"train_{corpus.kind}": len(corpus.train),
            f"valid_{corpus.kind}": len(corpus.valid),
        }
        if chat is not None:
            description["chat"] = {"template_source": chat.template_source}
        description["model_config"] = model.config.to_dict()
        description["tokenizer"] = {**tokenizer.settings(), "vocab_size": tokenizer.vocab_size}
        experiment.write_description(description)

    loader_options = {
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "seed": args.seed,
        "bucket_batches": args.bucket_batches,
    }
    if chat is None:
        data = DocumentDataModule(tokenizer, corpus.train, corpus.valid, **loader_options)
        prompt = sample_prompt(tokenizer, corpus.valid)
    else:
        encoder = ChatEncoder(tokenizer, chat, args.max_body_len)
        train_set = encode_conversations(encoder, corpus.train)
        valid_set = encode_conversations(encoder, corpus.valid)
        data = DialogDataModule(tokenizer, train_set, valid_set, **loader_options)
        prompt = sample_prompt_ids(encoder, corpus.valid)
    module_class, sequence = DocumentLM, {}
    if args.sequence_unlikelihood:
        config = sequence_ul_config(args, tokenizer, chat)
        module_class, sequence = SequenceULDocumentLM, {"sequence": config}
    module = module_class(
        model,
        tokenizer,
        args.optimizer(),
        unlikelihood_alpha=args.unlikelihood_alpha,
        unlikelihood_reduction=args.unlikelihood_reduction,
        training_args=args.to_json_dict(),
        chat=chat,
        **sequence,
    )
    checkpoints = ModelCheckpoint(
        dirpath=experiment.models_dir,
        filename="best-epoch={epoch}-step={step}",
        auto_insert_metric_name=False,
        # The best language model, whatever the UL weight: Loss/valid would add alpha x UL.
        monitor="Perplexity/valid",
        mode="min",
        save_top_k=1,
    )
    last_checkpoint = SaveLast(experiment.models_dir / "last.ckpt")
    callbacks = [
        checkpoints,
        last_checkpoint,
        SaveOnException(experiment.models_dir / "interrupted.ckpt"),
        StopOnCtrlC(),
        SampleWriter(experiment.samples_file, prompt),
    ]
    trainer = build_trainer(args, experiment, callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=args.resume_from)
    best = checkpoints.best_model_path or None
    last = last_checkpoint.path if last_checkpoint.path.is_file() else None
    logger.info("Finished at global step %d; best checkpoint: %s", trainer.global_step, best)
    return TrainResult(
        experiment=experiment,
        best_checkpoint=Path(best) if best else None,
        last_checkpoint=Path(last) if last else None,
        global_step=trainer.global_step,
    )


def build_trainer(args: TrainArgs, experiment: Experiment, callbacks: list) -> pl.Trainer:
    """The Lightning Trainer; its own option checks (precision, strategy, ...) → ArgsError."""
    try:
        return _trainer(args, experiment, callbacks)
    except (ValueError, MisconfigurationException) as e:
        raise ArgsError(f"trainer options: {e}") from e


def trainer_devices(args: TrainArgs) -> dict:
    """The original project's `--gpus "0,"` on a machine without a CUDA GPU trains on the CPU
    (with a warning), so its README command runs anywhere; `--accelerator gpu` still fails."""
    devices = args.trainer_devices()
    if args.gpus is not None and devices["accelerator"] == "gpu" and not torch.cuda.is_available():
        logger.warning("--gpus %s: no CUDA GPU on this machine; training on the CPU", args.gpus)
        return {"accelerator": "cpu", "devices": 1}
    return devices


def _trainer(args: TrainArgs, experiment: Experiment, callbacks: list) -> pl.Trainer:
    quiet_lightning()
    return pl.Trainer(
        **trainer_devices(args),
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        max_epochs=args.resolved_max_epochs(),
        max_steps=args.max_steps,
        limit_train_batches=args.limit_train_batches,
        limit_val_batches=args.limit_val_batches,
        val_check_interval=args.val_check_interval,
        accumulate_grad_batches=args.accumulate_grad_batches,
        gradient_clip_val=args.gradient_clip_val or None,
        log_every_n_steps=args.log_every_n_steps,
        logger=TensorBoardLogger(save_dir=experiment.logs_dir, name="tensorboard", version=""),
        callbacks=callbacks,
        default_root_dir=experiment.dir,
        reload_dataloaders_every_n_epochs=RELOAD_EVERY_N_EPOCHS,
        use_distributed_sampler=False,  # DocumentDataModule shards batches itself
    )


class SaveLast(pl.Callback):
    """models/last.ckpt: the state after every validation and at the end of training.

    Lightning 2.6's ModelCheckpoint(save_last=True) rewrites last.ckpt only when a top-k
    checkpoint was saved, so with a monitor "last" was the last *improvement* (earlier quality
    runs evaluated a step-680 "last" of an 800-step run). Written to a temporary file and
    renamed: a crash never leaves a truncated last.ckpt.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved_step: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only when steps ran after the last validation: a checkpoint taken after the loop
        # ended resumes with TensorBoard step numbers one higher than an unbroken run.
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        self._saved_step = trainer.global_step
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(
            tmp, weights_only=False
        )  # full state (resume); every rank calls it; rank zero writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier()


class SaveOnException(pl.Callback):
    """Saves models/interrupted.ckpt when training stops on an exception or Ctrl+C.

    (Lightning's OnExceptionCheckpoint would also turn every fit(ckpt_path=None) into
    ckpt_path="last", i.e. resume silently when a last.ckpt exists.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        if trainer.global_step == 0:
            return  # nothing trained yet (e.g. a setup error): nothing worth resuming
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        except Exception:  # never hide the original error behind this one
            logger.warning("Could not save %s", self.path, exc_info=True)
            return
        logger.info("Saved %s (resume with --resume_from)", self.path)


class StopOnCtrlC(pl.Callback):
    """Ctrl+C stops training cleanly: the main process alone handles it.

    A terminal's Ctrl+C sends SIGINT to the whole process group, DataLoader workers
    included. Two races made fst-train misbehave (the Ctrl+C test, about one run in ten):
    - a worker forked at an epoch or validation start died of the KeyboardInterrupt before
      reaching torch's handler (exit code 1), and the main process then failed with
      "DataLoader worker exited unexpectedly" or a lost shared-memory batch instead of
      saving interrupted.ckpt. So, during fit, forked children ignore SIGINT (set by an
      at-fork hook, before any of their code runs); the main process shuts them down.
    - in the main process the KeyboardInterrupt can land in an at-fork handler or a
      `__del__`, where Python prints "Exception ignored" and carries on: training went on
      forever. The handler installed here remembers the signal, and the next batch or
      epoch boundary raises KeyboardInterrupt again, which Lightning handles as usual
      (SaveOnException writes interrupted.ckpt).
    """

    _fitting = False  # read by the at-fork hook (process-wide, like the signal handler)
    _hook_installed = False

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        if not StopOnCtrlC._hook_installed:
            os.register_at_fork(after_in_child=StopOnCtrlC._after_fork_in_child)
            StopOnCtrlC._hook_installed = True
        StopOnCtrlC._fitting = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        StopOnCtrlC._fitting = False
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @staticmethod
    def _after_fork_in_child() -> None:
        if StopOnCtrlC._fitting:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_sigint(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def _stop_if_requested(self, *args, **kwargs) -> None:
        if self.requested:
            raise KeyboardInterrupt

    on_train_epoch_start = _stop_if_requested
    on_train_batch_start = _stop_if_requested
    on_validation_start = _stop_if_requested
    on_validation_batch_start = _stop_if_requested


def data_files(args: TrainArgs) -> tuple[Path, Path]:
    """The train/valid files, building the demo corpus when none are given."""
    if not args.uses_demo_corpus:
        return Path(args.train_file), Path(args.valid_file)
    demo_dir = Path(args.experiments_root).resolve().parent / "documents" / "demo"
    logger.info("No --train_file: using the demo corpus in %s", demo_dir)
    return build_demo_corpus(demo_dir)


@dataclass
class Corpus:
    """The training and validation data: documents or conversations (`fst.core.dialogs`:
    the format is detected from each file's first line)."""

    kind: str  # "documents" or "dialogs"
    train: list[Document] | list[Conversation]
    valid: list[Document] | list[Conversation]

    @property
    def dialogs(self) -> bool:
        return self.kind == "dialogs"

    @classmethod
    def read(cls, train_file: Path, valid_file: Path) -> Corpus:
        formats = {detect_format(train_file), detect_format(valid_file)}
        if formats == {DOCUMENTS}:
            return cls("documents", read_documents(train_file), read_documents(valid_file))
        if DOCUMENTS in formats:
            raise DocumentError(
                f"{train_file} and {valid_file}: one holds documents, the other dialogs"
            )
        return cls("dialogs", read_conversations(train_file), read_conversations(valid_file))


def document_settings(args: TrainArgs) -> dict:
    """DocumentTokenizer settings of this run."""
    if args.max_meta_len == 0:
        logger.info("--max_meta_len 0: documents are trained without their meta")
    return {
        "max_meta_len": args.max_meta_len,
        "max_body_len": args.max_body_len,
        "ignore_meta_prob": args.ignore_meta_prob,
    }


def tokenizer_and_model(
    args: TrainArgs, train_file: Path, experiment: Experiment, corpus: Corpus
) -> tuple[DocumentTokenizer, transformers.PreTrainedModel, ChatFormat | None]:
    """The tokenizer, the model and (dialogs) the chat format: fresh, or as in the
    checkpoint with --resume_from. Dialogs use the plain-LM tokenizer format (the chat
    template is the format) and `--max_body_len` as the whole sequence's length."""
    if corpus.dialogs:
        settings = {"document_format": False, "max_body_len": args.max_body_len}
    else:
        settings = {"document_format": True, **document_settings(args)}
    info = None
    if args.resume_from:
        info = read_checkpoint(args.resume_from)[CHECKPOINT_KEY]
        # The vocabulary must be the checkpoint's; the document settings are this run's.
        tokenizer = DocumentTokenizer.from_json(
            info["tokenizer_json"], **{**info["document"], **settings}
        )
        model = build_model_from_info(info)
    elif args.fine_tunes_checkpoint:
        tokenizer, model, info = checkpoint_tokenizer_and_model(args.model_path, settings)
    else:
        check_model_path(args.model_path)
        if is_rank_zero():
            tokenizer = load_tokenizer(args, train_file, settings, corpus)
        else:  # the other ranks use rank 0's tokenizer: a BPE trained twice might differ
            tokenizer = DocumentTokenizer.from_pretrained(
                experiment.dir / BUNDLE_TOKENIZER, **settings
            )
        model = None
    chat = None
    if corpus.dialogs:
        chat = chat_format_for(args.model_path, info, tokenizer)
        add_chat_tokens(tokenizer, chat)
    if model is None:
        model = build_model(
            args.model_path, tokenizer.vocab_size, tokenizer.eos_token_id, args.model_overrides
        )
    else:
        resize_token_embeddings(model, tokenizer.vocab_size)
    return tokenizer, model, chat


def checkpoint_tokenizer_and_model(
    path: str, settings: dict
) -> tuple[DocumentTokenizer, transformers.PreTrainedModel, dict]:
    """A checkpoint's weights, vocabulary and fst payload to fine-tune (the document
    settings are this run's; the optimizer, schedule and step count start afresh)."""
    loaded = load_checkpoint(path)
    tokenizer = DocumentTokenizer.from_json(
        loaded.info["tokenizer_json"], **{**loaded.info["document"], **settings}
    )
    logger.info("Fine-tuning the weights of %s (step %s)", path, loaded.info.get("global_step"))
    return tokenizer, loaded.model.train(), loaded.info


def sequence_ul_config(
    args: TrainArgs, tokenizer: DocumentTokenizer, chat: ChatFormat | None
) -> SequenceULConfig:
    """Dialogs: prefixes end where assistant turns start, and only the continuation's
    tokens before its first end-of-turn token are penalised (the assistant's own)."""
    stop = [tokenizer.token_id(t) for t in chat.end_of_turn] if chat is not None else []
    return SequenceULConfig(
        assistant_only=chat is not None,
        stop_token_ids=tuple(i for i in stop if i is not None),
        prefix_len=args.prefix_len,
        continuation_len=args.continuation_len,
        ngram=args.ngram,
        probability=args.sequence_ul_prob,
        alpha=args.sequence_ul_alpha,
        max_prefixes=args.sequence_ul_prefixes,
        candidates=args.sequence_ul_candidates,
        seed=args.seed,
    )


def load_tokenizer(
    args: TrainArgs, train_file: Path, settings: dict, corpus: Corpus
) -> DocumentTokenizer:
    """--tokenizer / --tokenizer_class_name / the model's own / a new BPE (see --help)."""
    source = args.tokenizer
    model_dir = Path(args.model_path)
    if args.tokenizer_class_name == GPT2_TOKENIZER_CLASS:
        has_own = (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.json").is_file()
        source = str(model_dir) if has_own else "gpt2"  # the BPE shipped with fst
    elif source is None:
        source = "bpe" if args.model_path in PRESETS else args.model_path
    if source == "bpe":
        logger.info("Training a byte-level BPE (vocab %d) on %s", args.bpe_vocab_size, train_file)
        if corpus.dialogs:
            texts = message_texts(corpus.train)
            return DocumentTokenizer.train_bpe_from_texts(
                texts, vocab_size=args.bpe_vocab_size, **settings
            )
        return DocumentTokenizer.train_bpe([train_file], vocab_size=args.bpe_vocab_size, **settings)
    try:
        if source == args.model_path and find_gguf(source) is not None:
            return gguf_tokenizer(source, **settings)
        return DocumentTokenizer.from_pretrained(source, **settings)
    except ValueError as e:  # GGUFError too
        raise ArgsError(f"tokenizer: {e}") from e


def sample_prompt(tokenizer: DocumentTokenizer, valid_docs: list[Document]) -> Document:
    """The generated.txt prompt: [START_OF_DOCUMENT], after a validation meta if metas are used."""
    uses_meta = tokenizer.settings()["ignore_meta_prob"] < 1.0
    meta = next((d.meta for d in valid_docs if d.meta), None) if uses_meta else None
    return Document(body="", meta=meta)
