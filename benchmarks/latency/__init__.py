"""How fast fst generates: decode, prefill, features (logprobs, structured output, speculative
lookup, the prefix cache), against llama.cpp, CTranslate2 and Hugging Face."""
