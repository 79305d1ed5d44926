"""Network wrappers for the generator backends (pixel-space UNet, diffusers inpainting pipeline)."""
