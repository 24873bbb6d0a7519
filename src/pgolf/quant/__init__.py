"""Quantisers that turn trained weights into compact integer tensors."""
