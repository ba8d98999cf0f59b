"""How a transformers causal LM takes and returns its KV cache object, whatever the version.

transformers 5 renamed the forward argument `past_key_values` to `cache` (and the output
field with it); the old name still works through a shim that warns (FutureWarning) and is
removed in 5.40. Older releases know only `past_key_values`, and would silently ignore a
`cache=` keyword (it lands in the attention kwargs). The name is therefore read from the
installed version's output class once, not guessed, and every forward call in the exporter
and its parity checks goes through `cache_kwargs` / `returned_cache`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast


def _cache_name() -> str:
    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


# The forward keyword and the output attribute of the KV cache in this transformers.
CACHE_NAME = _cache_name()


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`model(**feed, **cache_kwargs(cache), use_cache=True)`: the cache under its current name."""
    return {CACHE_NAME: cache}


def returned_cache(output: Any) -> Any:
    """The updated cache a forward call returned (`output.cache`, or `past_key_values` before)."""
    return getattr(output, CACHE_NAME)
