"""The sections of `benchmarks/run.py`: one module per section, helpers in `common`."""
