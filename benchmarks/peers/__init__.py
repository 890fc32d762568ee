"""The servers the harness compares Quiver with, one script each, and what they share.

Each script runs in the environment of the stack it stands for (`.venv` for the plain gRPC
server and Ray Serve; `.venv-bench-kserve`, `.venv-bench-mlserver` for KServe and MLServer,
whose pins clash with Quiver's), so they import nothing from `quiver` or `benchmarks` beyond
this folder: the harness puts it on PYTHONPATH.
"""
