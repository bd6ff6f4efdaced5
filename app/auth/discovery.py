"""SMART and OpenID discovery documents, and the CapabilityStatement's ``rest.security``.

Pure functions of the FHIR base URL (no Flask), so app/interactions can use them.
"""

from __future__ import annotations

from app.auth.clients import ASSERTION_ALGS
from app.auth.keys import ID_TOKEN_ALG

SMART_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# Exactly what is implemented (SMART App Launch 2.x capability names).
CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-passthrough-banner",
    "context-passthrough-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
]

SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.read",
    "user/*.rs",
    "user/*.cruds",
    "user/*.read",
    "user/*.write",
    "system/*.rs",
    "system/*.cruds",
    "system/*.read",
    "system/*.write",
]


def _root(fhir_base: str) -> str:
    base = fhir_base.rstrip("/")
    return base[: -len("/fhir")] if base.endswith("/fhir") else base


def endpoints(fhir_base: str) -> dict[str, str]:
    auth = _root(fhir_base) + "/auth"
    return {
        "authorize": f"{auth}/authorize",
        "token": f"{auth}/token",
        "introspect": f"{auth}/introspect",
        "revoke": f"{auth}/revoke",
        "jwks": f"{auth}/jwks",
        "launch": f"{auth}/launch",
    }


def smart_configuration(fhir_base: str) -> dict:
    e = endpoints(fhir_base)
    return {
        "issuer": fhir_base.rstrip("/"),
        "jwks_uri": e["jwks"],
        "authorization_endpoint": e["authorize"],
        "token_endpoint": e["token"],
        "introspection_endpoint": e["introspect"],
        "revocation_endpoint": e["revoke"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(fhir_base: str) -> dict:
    e = endpoints(fhir_base)
    return {
        "issuer": fhir_base.rstrip("/"),
        "authorization_endpoint": e["authorize"],
        "token_endpoint": e["token"],
        "jwks_uri": e["jwks"],
        "introspection_endpoint": e["introspect"],
        "revocation_endpoint": e["revoke"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "code_challenge_methods_supported": ["S256"],
    }


def capability_security(fhir_base: str) -> dict:
    """``CapabilityStatement.rest.security`` with the SMART oauth-uris extension."""
    e = endpoints(fhir_base)
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see .well-known/smart-configuration)",
            }
        ],
        "extension": [
            {
                "url": SMART_EXT,
                "extension": [
                    {"url": "token", "valueUri": e["token"]},
                    {"url": "authorize", "valueUri": e["authorize"]},
                    {"url": "introspect", "valueUri": e["introspect"]},
                    {"url": "revoke", "valueUri": e["revoke"]},
                ],
            }
        ],
    }
