"""``python -m scoreflow.methods``: print the methods page (``docs/methods.md``)."""

import scoreflow  # noqa: F401  (importing scoreflow registers every method)

from .table import methods_page

print(methods_page(), end="")
