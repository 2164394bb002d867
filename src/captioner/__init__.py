"""captioner: Show, Attend and Tell image captioning in PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
