"""The model family: the challenge baseline GPT and the record techniques, each a ModelConfig switch.

specs (the per-layer plan), layers (norm, linear, RoPE), embeddings (token-side inputs), attention,
documents (document masking), mlp, gpt (blocks, skips, recurrence, parallel residuals), roles.
"""
