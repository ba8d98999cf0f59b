"""The training stage (torch, transformers, Lightning): data, model, losses, the loop.

Nothing in the runtime or the server imports it; `fst.export` reads its checkpoints.
"""
