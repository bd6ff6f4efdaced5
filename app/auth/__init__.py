"""SMART on FHIR: authorization server, tokens, scopes and their enforcement."""
