"""Versioned resource storage: tables and the repository that writes and reads them."""
