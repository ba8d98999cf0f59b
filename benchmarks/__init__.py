"""Benchmarks, grouped by what they measure; run from the repository root as
`python -m benchmarks.<group>.<script>` (benchmarks/README.md lists each question and command).

Not installed with the package. Importing a module here is cheap and has no side effects:
the work runs under `main()`.
"""
