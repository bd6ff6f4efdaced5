"""One module per FHIR interaction, working on the storage core; no Flask here."""
