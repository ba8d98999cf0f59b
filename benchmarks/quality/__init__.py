"""What training and quantisation do to the model: perplexity, repetition, lm-eval scores."""
