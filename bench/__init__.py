"""Benchmarks: scripts that print figures (not tests); run each as `.venv/bin/python bench/NAME.py`."""
