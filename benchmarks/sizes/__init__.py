"""How big: bundles by format and model size, export and tokenization memory."""
