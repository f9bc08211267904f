"""The rule scripts: one module per Snakemake rule, run as `python -m mdgen.stages.<rule>`.

Each reads its paths and one `--config`, builds from the library, runs, writes atomically. No
stage imports another (see docs/architecture.md).
"""
