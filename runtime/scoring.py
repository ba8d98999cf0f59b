"""The logits of every position of a batch: one prefill with an empty past.

Generation needs only each row's last position (the stepper); scoring text (fst-eval's
perplexity of a bundle) needs them all, which a graph exported with `--logits all`
returns. The exporter's parity check calls this too, so the scoring path is verified in
every export just as the generation path is.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from fst.core.constants import ONNX_ATTENTION_MASK, ONNX_INPUT_IDS, ONNX_LOGITS, ONNX_POSITION_IDS
from fst.core.contract import SHARED_BUFFER_LAYOUTS, GraphContract


def prefill_logits(
    session: ort.InferenceSession,
    contract: GraphContract,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
) -> np.ndarray:
    """Logits [B, S, V] (float32) of padded rows ([B, S] int64 ids and mask, 0 = padding).

    Positions count real tokens only, so left and right padding give each row the
    positions it has alone. Logits at padded positions are meaningless.
    """
    if contract.logits != "all":
        raise ValueError("prefill_logits needs a graph exported with --logits all")
    batch, width = input_ids.shape
    capacity = width + 1 if contract.kv_layout in SHARED_BUFFER_LAYOUTS else 0
    past = np.zeros(contract.kv_shape(batch, capacity), dtype=np.dtype(contract.dtype))
    positions = np.clip(np.cumsum(attention_mask, axis=-1) - 1, 0, None).astype(np.int64)
    feed = {
        ONNX_INPUT_IDS: np.ascontiguousarray(input_ids, dtype=np.int64),
        ONNX_ATTENTION_MASK: np.ascontiguousarray(attention_mask, dtype=np.int64),
        ONNX_POSITION_IDS: positions,
    }
    feed.update(dict.fromkeys(contract.past_names, past))
    (logits,) = session.run([ONNX_LOGITS], feed)
    return logits.astype(np.float32, copy=False)
