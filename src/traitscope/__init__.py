"""traitscope: trait-vector interpretability of language models."""

__version__ = "0.1.0"
