"""Calibration (issue #5): captures real feeds through runtime/ to build lower-precision engines."""
