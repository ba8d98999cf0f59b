"""Server settings: one pydantic-settings object read from `FST_…` variables and CLI flags.

`fst-serve`'s flags are generated from these fields (`fst.core.cli_settings`): `--<name>`,
the description as help, `json_schema_extra=cli_extra(...)` for what --help needs besides.

Validated once, at start-up, with messages that name the field; everything else in the
server reads these values and never parses configuration itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fst.core.cli_settings import cli_extra
from fst.core.generation_params import MAX_NUM_RETURN_SEQUENCES

# Request-level batching runs a batch to its end, so a request arriving a moment after
# another would wait a whole batch: 5 ms of company-seeking is cheap against that. Continuous
# batching admits at the next token instead, and the wait would only add to the first
# token's time (5.2 ms of an 18 ms TTFT with a 50-token prompt, int8 GPT-2 small).
REQUEST_BATCH_WAIT_S = 0.005


class ServingSettings(BaseSettings):
    """Everything `fst-serve` can be told; each field is also the variable `FST_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FST_", extra="forbid")

    bundle: Path | None = Field(None, description="bundle folder written by fst-export")
    verify: bool = Field(
        False,
        description="check every bundle file's sha256 against the manifest before serving "
        "(sizes are always checked)",
    )
    model_name: str | None = Field(
        None,
        description="model id shown by /v1/models",
        json_schema_extra=cli_extra(shown_default="the bundle folder name"),
    )
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0: all)")
    port: int = Field(9228, ge=0, le=65535, description="TCP port (0: any free port)")
    providers: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="ONNX Runtime execution providers, comma-separated, in priority order",
        json_schema_extra=cli_extra(shown_default="the best available"),
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="ONNX Runtime intra-op threads",
        json_schema_extra=cli_extra(shown_default="ONNX Runtime's"),
    )
    huge_pages: bool = Field(
        True,
        description="move the model's weights into 2 MiB pages on the CPU (Linux >= 6.1; "
        "decode about a tenth faster, measured here)",
    )
    max_batch_size: int = Field(
        64,
        ge=1,
        le=256,
        description="most sequences decoded together in one batch (a hard cap: the batch is "
        "also sized by kv_cache_mb and max_step_ms)",
    )
    max_step_ms: float = Field(
        0.0,
        ge=0,
        description="admit more than 16 sequences only while the decode step, predicted from "
        "the measured ones, stays under this (the time between two tokens of every stream); "
        "0: no limit (the batch is then sized by kv_cache_mb and max_batch_size)",
    )
    max_prefill_tokens: int = Field(
        1024,
        ge=0,
        description="prompt tokens prefilled in one model call while other requests decode "
        "(vLLM's max_num_batched_tokens, llama-server's batch size, -b): a burst of requests is "
        "admitted over several steps, so the first ones get their first token without waiting "
        "for every prompt's prefill; the first waiting request always starts, whole; 0: no "
        "limit. Continuous batching only",
    )
    kv_cache_mb: int | None = Field(
        None,
        ge=1,
        description="memory the decode batch's KV cache may take (rows x the longest row's "
        "prompt + max_tokens); beyond it requests wait",
        json_schema_extra=cli_extra(shown_default="a quarter of the memory available at start"),
    )
    prefix_cache_mb: int = Field(
        256,
        ge=0,
        description="memory for the prefix cache: a prompt that starts like an earlier "
        "sequence (a chat's next turn) reuses its KV instead of recomputing it; 0 turns it off",
    )
    speculative_tokens: int = Field(
        0,
        ge=0,
        le=16,
        description="prompt lookup decoding: a greedy request decoding alone drafts up to this "
        "many tokens from its context and checks them in one model run (same text; needs a "
        "bundle exported with --logits all); 0: off",
    )
    batching: Literal["continuous", "request"] = Field(
        "continuous",
        description="'continuous': requests join the running batch at the next token; "
        "'request': a batch runs to its end before the next one starts",
    )
    batch_wait_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="how long a request reaching an idle server may wait for others to share "
        "its first batch (continuous batching admits later requests at the next token, so "
        "there a wait only delays the first token)",
        json_schema_extra=cli_extra(shown_default="0 with continuous batching, 5 with request"),
    )
    queue_size: int = Field(
        64, ge=1, description="requests that may wait for a batch; beyond it the server answers 429"
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="a request still running after this is cancelled (504)"
    )
    max_new_tokens_limit: int = Field(
        512, ge=1, description="largest max_tokens / max_number_of_generated_tokens accepted"
    )
    max_sequences_per_request: int = Field(
        16,
        ge=1,
        le=MAX_NUM_RETURN_SEQUENCES,
        description="largest n × number of prompts in one request",
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="request bodies larger than this are refused (413)"
    )
    api_key: SecretStr | None = Field(
        None,
        description="when set, every API call needs 'Authorization: Bearer <key>' "
        "(prefer the variable: flags show in the process list)",
    )
    warmup: bool = Field(True, description="run a tiny generation before reporting ready")
    shutdown_timeout_s: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM, how long running generations may take to finish; then they "
        "are ended with an error (streams: an error event and [DONE])",
    )
    limit_concurrency: int = Field(
        512,
        ge=1,
        description="most connections and requests at once; beyond it new requests get 503 "
        "(keep it below the open-files limit, `ulimit -n`)",
    )
    timeout_keep_alive_s: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a client must send a whole request (headers and body) within this, "
        "from connecting or from its first byte; else 408 and the connection is closed",
    )
    write_stall_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a response the client stops reading for this long (no write progress) "
        "is closed, and its generation cancelled",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level (prompts are logged at debug only)"
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()] or None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def batch_wait_s(self) -> float:
        """`batch_wait_ms` in seconds, its default resolved for the batching mode."""
        if self.batch_wait_ms is not None:
            return self.batch_wait_ms / 1000
        return REQUEST_BATCH_WAIT_S if self.batching == "request" else 0.0

    def served_model_name(self) -> str:
        """The model id clients pass as `model`."""
        if self.model_name:
            return self.model_name
        if self.bundle is not None:
            return Path(self.bundle).resolve().name or "fst"
        return "fst"
