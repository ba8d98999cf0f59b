"""fst-eval: perplexity and the unlikelihood paper's repetition metrics, for a checkpoint,
a Hugging Face folder or an exported bundle."""
