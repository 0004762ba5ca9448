"""Baichuan2 FP16 inference with self-speculative decoding (INT4 draft of the same weights)."""

__version__ = "0.1.0"
