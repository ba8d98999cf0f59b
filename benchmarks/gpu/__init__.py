"""fst on a CUDA device (run on a lent GPU machine, see transfer.md)."""
