"""Patient identity across the region: one Patient per NHS number, local identifiers (MRNs)
unique to one Patient, demographic matching (``Patient/$match``), merges and unmerges.

Framework-free like the rest of the core (no Flask imports); app/api/identity.py is the HTTP
adapter. docs/decisions/0009-patient-identity.md explains the choices.
"""
