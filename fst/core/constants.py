"""Contracts shared by training, export, runtime and serving. Torch-free.

Everything that two stages must agree on lives here and is imported by both sides:
special tokens, the loss-ignore label, the ONNX input/output names, bundle file names.
"""

# Document format (the original project's control-code encoding).
START_OF_DOCUMENT = "[START_OF_DOCUMENT]"
END_OF_META = "[END_OF_META]"
DOCUMENT_SPECIAL_TOKENS = (START_OF_DOCUMENT, END_OF_META)
GPT2_EOS = "<|endoftext|>"

# Label value ignored by the LM loss (PyTorch's CrossEntropyLoss default).
LOSS_IGNORE = -100

# Key under which fst stores its plain-data payload inside a Lightning checkpoint.
CHECKPOINT_KEY = "fst"
CHECKPOINT_FORMAT_VERSION = 1

# Bundle layout (written by fst.export, read by fst.runtime).
BUNDLE_MANIFEST = "fst_bundle.json"
BUNDLE_MODEL = "model.onnx"
BUNDLE_TOKENIZER = "tokenizer.json"
BUNDLE_FORMAT_VERSION = 1

# ONNX graph contract (optimum / ONNX Runtime GenAI naming).
ONNX_INPUT_IDS = "input_ids"
ONNX_ATTENTION_MASK = "attention_mask"
ONNX_POSITION_IDS = "position_ids"
ONNX_LOGITS = "logits"


def onnx_past_names(layer: int) -> tuple[str, str]:
    """Names of the past key/value inputs of one layer."""
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def onnx_present_names(layer: int) -> tuple[str, str]:
    """Names of the present key/value outputs of one layer."""
    return f"present.{layer}.key", f"present.{layer}.value"


# Reductions of the unlikelihood loss (fst.training.loss): the paper's per-token sum, or the original
# project's mean over (token, candidate) pairs.
UL_REDUCTIONS: tuple[str, ...] = ("token", "pair")
