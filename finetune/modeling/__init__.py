"""Model pieces of the fine-tuning package: registered timm ViTs, CLIP configs, HF-port key mapping."""
