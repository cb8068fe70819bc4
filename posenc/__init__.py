"""posenc: a lab for comparing positional encodings in transformers."""

__version__ = "0.1.0"
