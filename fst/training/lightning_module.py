"""The LightningModule around a Hugging Face causal LM, and the sample writer callback.

`DocumentLM.model` is the plain HF model, so the checkpoint's state_dict keys start with
`model.`; `on_save_checkpoint` adds the plain-data `checkpoint["fst"]` export reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import transformers

from fst.core.chat_format import ChatFormat
from fst.core.constants import CHECKPOINT_FORMAT_VERSION, CHECKPOINT_KEY, LOSS_IGNORE
from fst.core.documents import Document
from fst.core.generation_params import TRAINING_SAMPLE_PARAMS, GenerationParams
from fst.core.tokenization import DocumentTokenizer
from fst.core.versions import library_versions as _library_versions
from fst.training.config import OptimizerSettings
from fst.training.loss import ULReduction, language_model_losses

logger = logging.getLogger(__name__)

SAMPLES_FILE = "generated.txt"


# Checkpoint key -> distribution of the libraries a checkpoint records.
TRAINING_LIBRARIES = {
    "torch": "torch",
    "transformers": "transformers",
    "pytorch_lightning": "pytorch-lightning",
    "tokenizers": "tokenizers",
}


class DocumentLM(pl.LightningModule):
    """Trains `model` with LM loss + `unlikelihood_alpha` × unlikelihood loss."""

    def __init__(
        self,
        model: transformers.PreTrainedModel,
        tokenizer: DocumentTokenizer,
        optimizer: OptimizerSettings,
        unlikelihood_alpha: float | None = None,
        unlikelihood_reduction: ULReduction = "token",
        training_args: dict[str, Any] | None = None,
        chat: ChatFormat | None = None,
    ) -> None:
        super().__init__()
        self.chat = chat  # dialogs: the chat format the checkpoint carries to export
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer_settings = optimizer
        self.unlikelihood_alpha = unlikelihood_alpha or None
        self.unlikelihood_reduction = unlikelihood_reduction
        self.training_args = dict(training_args or {})
        self._valid_nll = 0.0  # token-weighted LM loss sum of the current validation
        self._valid_tokens = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _losses(self, batch: dict[str, torch.Tensor]):
        logits = self(batch["input_ids"], batch["attention_mask"])
        return language_model_losses(
            logits, batch["labels"], self.unlikelihood_alpha, self.unlikelihood_reduction
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._losses(batch)
        size = batch["input_ids"].shape[0]
        self.log("Loss/train", out.loss, prog_bar=True, batch_size=size)
        self.log("LM-Loss/train", out.lm_loss, batch_size=size)
        if out.ul_loss is not None:
            self.log("UL-Loss/train", out.ul_loss, batch_size=size)
        self.log("LR", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return out.loss

    def on_validation_epoch_start(self) -> None:
        self._valid_nll, self._valid_tokens = 0.0, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._losses(batch)
        size = batch["input_ids"].shape[0]
        self.log("Loss/valid", out.loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("LM-Loss/valid", out.lm_loss, batch_size=size, sync_dist=True)
        if out.ul_loss is not None:
            self.log("UL-Loss/valid", out.ul_loss, batch_size=size, sync_dist=True)
        tokens = int((batch["labels"][:, 1:] != LOSS_IGNORE).sum())
        self._valid_nll += out.lm_loss.item() * tokens
        self._valid_tokens += tokens

    def on_validation_epoch_end(self) -> None:
        # Perplexity over all validation tokens (not a mean of per-batch perplexities).
        totals = torch.tensor([self._valid_nll, self._valid_tokens], dtype=torch.float64)
        totals = self.trainer.strategy.reduce(totals.to(self.device), reduce_op="sum")
        if totals[1] > 0:
            self.log("Perplexity/valid", torch.exp(totals[0] / totals[1]).float())

    def configure_optimizers(self):
        settings = self.optimizer_settings
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        scheduler = transformers.get_cosine_with_hard_restarts_schedule_with_warmup(
            optimizer,
            num_warmup_steps=settings.num_warmup_steps,
            num_training_steps=max(1, int(self.trainer.estimated_stepping_batches)),
            num_cycles=settings.num_cycles,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.fst_info()

    def fst_info(self) -> dict[str, Any]:
        """The plain-data checkpoint payload (DEVELOPERS.md, "Checkpoint"); a model trained
        on dialogs adds "chat" (`ChatFormat.to_payload()`, fst-export's manifest.chat)."""
        config = self.model.config
        info = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model_type": config.model_type,
            "model_config": config.to_dict(),
            "tokenizer_json": self.tokenizer.to_json(),
            "document": self.tokenizer.settings(),
            "training_args": self.training_args,
            "global_step": int(self.trainer.global_step) if self._trainer else 0,
            "epoch": int(self.trainer.current_epoch) if self._trainer else 0,
            "versions": library_versions(),
        }
        if self.chat is not None:
            info["chat"] = self.chat.to_payload()
        return info


def library_versions() -> dict[str, str]:
    """What the checkpoint was trained with (`fst.core.versions`, the one implementation)."""
    return _library_versions(TRAINING_LIBRARIES)


class SampleWriter(pl.Callback):
    """Appends generated samples to `generated.txt` after every validation (not the sanity
    check), in the original project's format.

    Every rank generates (FSDP needs all ranks in a forward pass); rank 0 writes.
    """

    def __init__(
        self,
        out_file: str | Path,
        prompt: Document | list[int],
        params: GenerationParams = TRAINING_SAMPLE_PARAMS,
    ) -> None:
        self.out_file = Path(out_file)
        self.prompt = prompt
        self.params = params

    def on_validation_end(self, trainer: pl.Trainer, pl_module: DocumentLM) -> None:
        if trainer.sanity_checking:
            return
        samples = generate_samples(pl_module.model, pl_module.tokenizer, self.prompt, self.params)
        if not trainer.is_global_zero:
            return
        record = {
            "Global step": trainer.global_step,
            "Current epoch": trainer.current_epoch,
            "Generator params": self.params.to_dict(),
            "Generated samples": samples,
        }
        with self.out_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, indent=4) + "\n")


@torch.no_grad()
def generate_samples(
    model: transformers.PreTrainedModel,
    tokenizer: DocumentTokenizer,
    prompt: Document | list[int],
    params: GenerationParams,
) -> list[str]:
    """Seeded Hugging Face sampling; the global RNG state of training is left untouched.
    `prompt` is a document or (dialogs) the ids of a rendered chat prompt."""
    prompt_ids = prompt if isinstance(prompt, list) else tokenizer.encode_for_inference(prompt)
    device = next(model.parameters()).device
    max_positions = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", len(prompt_ids) + params.max_new_tokens
    )
    max_new_tokens = min(params.max_new_tokens, max_positions - len(prompt_ids))
    if max_new_tokens < 1:
        return []
    within = replace(
        params,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min(params.min_new_tokens, max_new_tokens),
    )
    config = transformers.GenerationConfig(
        **within.hf_generation_kwargs(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
    )
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(params.seed if params.seed is not None else 0)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
        )
    model.train(was_training)
    return [tokenizer.decode(ids[len(prompt_ids) :].tolist()) for ids in output]
