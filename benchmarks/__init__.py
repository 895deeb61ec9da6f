"""Benchmarks of pushforward against the peer libraries (zuko, nflows, normflows, torchflows).

Run ``python -m benchmarks.compare --help``; see benchmarks/README.md.
"""
