"""clipadapt: adapt CLIP-style vision-language models to your domain with few labels."""

__version__ = "0.1.0"
