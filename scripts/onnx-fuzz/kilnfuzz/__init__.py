"""kilnfuzz: kiln's model-level differential ONNX fuzzer.

Seed model families (families.py) are mutated with a seeded RNG (mutate.py),
run through ONNX Runtime (oracle.py) and through kiln's batch runner
`kiln-onnx-runner` (runner.py), and compared (compare.py). Differences are
arbitrated with onnx.reference and checked against the list of expected
divergences (divergences.py); failing cases are saved as self-contained
repro directories (cases.py). `python -m kilnfuzz --help` for the CLI.
"""
