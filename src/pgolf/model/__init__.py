"""The model family: the challenge baseline GPT and its building blocks."""
