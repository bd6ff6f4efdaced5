"""Search-parameter registry (from the R4 spec) and index-row extraction; framework-free."""

from app.indexing.diff import diff_rows
from app.indexing.extract import COLUMNS, KINDS, extract
from app.indexing.registry import Registry, SearchParam, load_registry

__all__ = ["COLUMNS", "KINDS", "Registry", "SearchParam", "diff_rows", "extract", "load_registry"]
