"""shopsearch: train, build and serve product search on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
