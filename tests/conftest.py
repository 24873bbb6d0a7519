"""Shared fixtures of the test suite."""

import os

from helpers_text import tiny_tokenizer  # noqa: F401  (a fixture: a small SentencePiece model)

# Many tests run `python -m pgolf` in a temporary folder; a relative PYTHONPATH entry (`PYTHONPATH=src`,
# as a machine without the package installed runs the suite) would not resolve there.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p
                                               for p in os.environ["PYTHONPATH"].split(os.pathsep))
