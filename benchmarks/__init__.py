"""Quiver's benchmarks: run by hand (`python -m benchmarks.NAME`), never by the test suite."""
