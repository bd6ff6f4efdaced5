"""Database access: one engine per app, one connection/transaction per unit of work."""

from app.db.engine import make_engine, unit_of_work

__all__ = ["make_engine", "unit_of_work"]
