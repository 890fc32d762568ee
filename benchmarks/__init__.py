"""Quiver's benchmarks: run by hand (`python -m benchmarks bench`, `python -m benchmarks.NAME`).

The peer-comparison harness (`harness`, `loadgen`, `inprocess`, `targets`, `models`, `report`,
the servers in `peers/`) gets quick tests of its own (tests/test_bench.py); the measurements
themselves are never part of the test suite.
"""
