"""The tests' real Kubernetes: install.sh builds it, control_plane.py runs it."""
