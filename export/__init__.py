"""fst.export: a checkpoint or Hugging Face GPT-2 model -> a verified ONNX bundle with KV cache.

API: `fst.export.exporter.export_bundle(output, ckpt=... | model_path=...)`; CLI: fst-export.
Pipeline: source (load) -> wrapper + onnx_export (trace; ort_attention unless --no_optimize)
-> optimize (fusions; fp16, int8) -> tied_weights (the embedding stored once)
-> verify (ONNX Runtime vs PyTorch) -> bundle_writer (atomic folder, manifest).
Nothing is imported here: importing fst.export must stay cheap.
"""
