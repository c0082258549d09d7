"""Calibration: lower-precision engine dirs from feeds captured through the runtime on real requests, and how
close they come to fp32 (fidelity.py, report.py)."""
