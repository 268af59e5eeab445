"""The bundled demo: the Shapes Demo Model (shapes/: renderer, prompt encoder, unshuffle VAE, ComfyUI model build,
weights) that the example workflows run on, and `python -m demo.run` (what `make demo` runs)."""
