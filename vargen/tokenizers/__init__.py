"""Tokenizers: discrete VQ and continuous KL. Importing this package registers them."""
