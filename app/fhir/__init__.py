"""FHIR glue: OperationOutcome errors, validation, JSON helpers, Bundle builders."""
