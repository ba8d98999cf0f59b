"""fst.runtime: generate text from an fst bundle with ONNX Runtime, without torch.

Imports only numpy, onnxruntime, tokenizers and fst's torch-free modules.
"""

from fst.core.generation_params import GenerationParams
from fst.runtime.constraints import Constraint, ConstraintError
from fst.runtime.decode_batch import DecodeBatch, Row, StepEvent
from fst.runtime.generator import Generator
from fst.runtime.prompts import BatchLimits
from fst.runtime.requests import ChatPrompt, Completion, GenerationRequest, Prompt

__all__ = [
    "BatchLimits",
    "ChatPrompt",
    "Completion",
    "Constraint",
    "ConstraintError",
    "DecodeBatch",
    "GenerationParams",
    "GenerationRequest",
    "Generator",
    "Prompt",
    "Row",
    "StepEvent",
]
