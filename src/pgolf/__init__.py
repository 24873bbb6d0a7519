"""pgolf: parameter golf — train the best language model that fits a byte budget and a time budget."""

__version__ = "0.1.0"
