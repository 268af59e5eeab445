"""The shapes demo model: procedural scenes (renderer), an exactly invertible pixel-unshuffle VAE, a tiny prompt
encoder and an SD-style eps UNet of ComfyUI's own class trained on the scenes (model, train)."""
