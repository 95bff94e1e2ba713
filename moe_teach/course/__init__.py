"""Course tooling: exercise checks, grading, exercise generation, the benchmark and the CLI.

The top layer: it may import everything else in ``moe_teach``; nothing imports it.
"""
