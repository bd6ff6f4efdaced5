"""Bulk Data ``$export`` (FHIR Bulk Data Access 2.0.0): jobs, snapshot export to NDJSON, worker.

Framework-free (no Flask): app/api/bulk.py is the HTTP adapter. Modules: ``params`` (kick-off
validation), ``jobs`` (kick-off, status/manifest, cancel, authorisation), ``export`` (snapshot
query and file writer), ``worker`` (claiming, resume, expiry), ``tables`` (schema).
"""
