"""The OpenAPI 3.1 document served at ``/v1/openapi.json``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import notary

if TYPE_CHECKING:
    from notary.config import NotaryConfig

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_ENVELOPE = {
    "type": "object",
    "required": ["payloadType", "payload", "signatures"],
    "properties": {
        "payloadType": {"type": "string"},
        "payload": {"type": "string", "contentEncoding": "base64"},
        "signatures": {
            "type": "array",
            "items": {"type": "object", "required": ["keyid", "sig"],
                      "properties": {"keyid": {"type": "string"}, "sig": {"type": "string"}}},
        },
    },
}


def _err(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": _ERROR}}}


_OHTTP_REQ = {"application/ohttp-req": {"schema": {"type": "string", "format": "binary"}}}
_OHTTP_RES = {"application/ohttp-res": {"schema": {"type": "string", "format": "binary"}}}


def _gateway_paths() -> dict[str, Any]:
    return {"/.well-known/ohttp-gateway": {
        "get": {"summary": "Oblivious HTTP gateway key configurations (RFC 9540): current, then next",
                "responses": {"200": {"description": "application/ohttp-keys", "content": {
                    "application/ohttp-keys": {"schema": {"type": "string", "format": "binary"}}}}}},
        "post": {"summary": "Oblivious HTTP gateway (RFC 9458): an encapsulated POST /v1/observe or GET /v1/notary",
                 "requestBody": {"required": True, "content": _OHTTP_REQ},
                 "responses": {"200": {"description": "The encapsulated answer (inner errors are inside it)",
                                       "content": _OHTTP_RES},
                               "400": _err("Not decryptable (unknown key id, tampered, truncated) or body timeout"),
                               "413": _err("Body too large"), "415": _err("Not application/ohttp-req"),
                               "429": _err("Rate limited (one token per message, before decryption)")}}}}


def _relay_paths() -> dict[str, Any]:
    key_id = {"name": "key_id", "in": "path", "required": True,
              "schema": {"type": "string"}, "description": "A bundle notary's key id, e.g. ed25519:ab12..."}
    return {
        "/v1/relay/{key_id}": {"post": {
            "summary": "Oblivious HTTP relay: forward an encapsulated request to that notary's gateway",
            "parameters": [key_id], "requestBody": {"required": True, "content": _OHTTP_REQ},
            "responses": {"200": {"description": "The gateway's answer, unchanged", "content": _OHTTP_RES},
                          "404": _err("Not a notary of the relay's bundle"), "413": _err("Body too large"),
                          "415": _err("Not application/ohttp-req"), "429": _err("Rate limited"),
                          "502": _err("Gateway unreachable"), "504": _err("Gateway timeout")}}},
        "/v1/relay/{key_id}/notary": {"get": {
            "summary": "That notary's signed identity document, fetched by the relay",
            "parameters": [key_id],
            "responses": {"200": {"description": "DSSE envelope", "content": {"application/json": {"schema": _ENVELOPE}}},
                          "404": _err("Not a notary of the relay's bundle"), "429": _err("Rate limited"),
                          "502": _err("Gateway unreachable"), "504": _err("Gateway timeout")}}},
    }


def openapi_document(config: "NotaryConfig", *, relay: bool = False) -> dict[str, Any]:
    """The document for a notary with ``config``; ``relay``: it also relays (``serve --relay``)."""
    target = {
        "type": "object", "required": ["host"], "additionalProperties": False,
        "properties": {
            "host": {"type": "string", "maxLength": 253},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 443},
            "sni": {"type": ["string", "null"]},
        },
    }
    results = {
        "description": ("One result per target, in request order; each holds signed observation envelopes"
                        " and the freshness proof binding them to the nonce"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Results"}}},
    }
    nonce = {"type": "string", "minLength": 16, "maxLength": 128, "pattern": "^[A-Za-z0-9_-]+$"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parallax notary", "version": notary.__version__},
        "paths": {
            "/v1/notary": {"get": {"summary": "Signed identity document", "responses": {
                "200": {"description": "DSSE envelope", "content": {"application/json": {"schema": _ENVELOPE}}},
                "429": _err("Rate limited")}}},
            "/v1/observe": {"post": {
                "summary": "Observe targets",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["targets", "nonce"], "additionalProperties": False,
                    "properties": {
                        "targets": {"type": "array", "minItems": 1, "maxItems": config.max_targets, "items": target},
                        "nonce": nonce,
                        "max_age": {"type": "integer", "minimum": 0},
                        "all_addresses": {"type": "boolean"},
                    }}}}},
                "responses": {"200": results, "400": _err("Bad input"), "413": _err("Body too large"),
                              "429": _err("Rate limited")}}},
            "/v1/observe/{host}/{port}": {"get": {
                "summary": "Observe one target (for curl)",
                "parameters": [
                    {"name": "host", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "port", "in": "path", "required": True, "schema": {"type": "integer"}},
                    {"name": "nonce", "in": "query", "required": True, "schema": nonce},
                    {"name": "sni", "in": "query", "schema": {"type": "string"}},
                    {"name": "max_age", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "all_addresses", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {"200": results, "400": _err("Bad input"), "429": _err("Rate limited")}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            **_gateway_paths(),
            **(_relay_paths() if relay else {}),
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "reason"],
                      "properties": {"error": {"type": "string"}, "reason": {"type": "string"}}},
            "Envelope": _ENVELOPE,
            "Results": {"type": "object", "required": ["results"], "properties": {"results": {
                "type": "array", "items": {"type": "object", "properties": {
                    "target": target, "envelopes": {"type": "array", "items": _ENVELOPE},
                    "freshness": {"type": "object", "required": ["statement", "leaf", "index", "path"], "properties": {
                        "statement": _ENVELOPE, "leaf": {"type": "string", "description": "base64 of the leaf bytes"},
                        "index": {"type": "integer", "minimum": 0},
                        "path": {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}}}}}}},
        }},
    }
