"""Algorithms in plain torch; only the host package (core/host/) touches ComfyUI."""
