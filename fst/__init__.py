"""Full Stack Transformer: documents → trained GPT-2-style LM → ONNX bundle → serving.

This module imports nothing heavy on purpose: `fst.runtime` and `fst.serving` must work
without torch, lightning or transformers installed.
"""

__version__ = "0.3.0"
