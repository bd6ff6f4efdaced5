"""String normalisation shared by indexing and search, so both sides compare the same text."""

from __future__ import annotations

import unicodedata

__all__ = ["normalize_string", "STRING_NORM_MAX"]

STRING_NORM_MAX = 255


def normalize_string(text: str) -> str:
    """FHIR string search ignores case and accents: NFKD, drop combining marks, casefold,
    collapse whitespace, cut to the indexed column's 255 characters."""
    if text.isascii():
        out = text.casefold()
    else:
        decomposed = unicodedata.normalize("NFKD", text)
        out = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join(out.split())[:STRING_NORM_MAX]
