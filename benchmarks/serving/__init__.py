"""fst-serve under load: throughput, time to first token, memory; against llama-server."""
