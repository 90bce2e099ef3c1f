"""Benchmarks that place edge-agent beside its baselines, measured in the same run.

``python -m bench [--quick] [--json PATH]`` runs them all; see ``bench/README.md``.
"""
