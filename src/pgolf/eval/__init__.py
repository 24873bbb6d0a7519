"""Evaluation: the exact val_bpb metric and the standard and sliding-window evaluators."""
