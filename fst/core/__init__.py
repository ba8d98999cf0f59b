"""The torch-free core every stage shares: documents, tokenizer, bundle format, contracts.

`fst.runtime` and `fst.serving` may import only this subpackage of `fst` (a test checks),
so nothing here imports torch, transformers or Lightning.
"""
