"""Lightning's messages a user cannot act on, kept off the first screen.

Filtered by message, not by muting Lightning's loggers, so its warnings that matter
(a bad option, a device that is missing) still show.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's own notes about settings fst passes on purpose, and its advertisement.
_NOISE = (
    "💡 Tip:",  # an advertisement for a cloud logger
    "was configured so",  # `Trainer(limit_train_batches=1.0)` ...: fst passes its defaults
    "to estimate number of stepping batches",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


def quiet_lightning() -> None:
    """Install the filters once per process (idempotent)."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
    # Lightning's own use of a torch API it deprecated; nothing for a user to change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
