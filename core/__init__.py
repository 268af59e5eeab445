"""Algorithms in plain torch; only host.py touches ComfyUI."""
