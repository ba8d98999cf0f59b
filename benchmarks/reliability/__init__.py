"""Whether fst-serve survives overload, bad clients, signals, broken bundles and a soak."""
