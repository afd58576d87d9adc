"""The app's OpenAPI description, generated from the request model and the error shape.

Served at `GET /api/openapi.json` so clients (and schemathesis in the tests) see the same limits
the endpoint enforces: they come from the same settings.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from chatstream.schema import ChatRequest
from chatstream.settings import Settings

_REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": "string"},
                "retryable": {"type": "boolean"},
                "retry_after": {"type": "number"},
            },
        }
    },
}

USAGE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "reasoning_tokens": {
            "type": "integer",
            "description": "hidden reasoning tokens (in completion_tokens), when the upstream reports them",
        },
    },
}

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "chain", "deployment", "content", "finish_reason", "usage"],
    "properties": {
        "id": {"type": "string"},
        "chain": {"type": "string"},
        "deployment": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "content": {"type": "string"},
        "finish_reason": {"type": ["string", "null"]},
        "usage": USAGE_SCHEMA,
        "fallback_from": {
            "type": "array",
            "description": "the deployments that failed before the one that answered (only after a fallback)",
            "items": {
                "type": "object",
                "properties": {
                    "deployment": {"type": "string"},
                    "code": {"type": "string"},
                    "status": {"type": "integer"},
                },
            },
        },
    },
}

#: One SSE event: `data` is an event JSON object (docs/protocol.md) or the final `[DONE]`.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}

_ERRORS = {
    "400": "invalid JSON or request, unknown chain, an option the deployment does not take "
    "(unsupported_parameter), or the prompt was blocked by the content filter",
    "406": "Accept refuses (q=0) both text/event-stream and application/x-ndjson for a stream",
    "413": "the body is larger than CHAT_MAX_BODY_BYTES",
    "429": "the model is rate limited (Retry-After says when to retry)",
    "500": "a bug; details are in the log only",
    "502": "the model service failed, could not be reached, or rejected the request",
    "503": "the model is not configured, or overloaded (Retry-After)",
    "504": "the model did not answer in time",
}


def _request_schema(settings: Settings, chains: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pydantic schema with the run-time limits written in."""
    schema = ChatRequest.model_json_schema(ref_template=_REF)
    defs = schema.pop("$defs", {})
    props = schema["properties"]
    props["messages"]["maxItems"] = settings.max_messages
    props["messages"]["minItems"] = 1
    # `user` or `messages`, not both. (That the last message is the user's is beyond JSON Schema.)
    schema["oneOf"] = [
        {"required": ["user"], "not": {"required": ["messages"]}},
        {"required": ["messages"], "not": {"required": ["user"]}},
    ]
    props["max_tokens"]["anyOf"][0]["maximum"] = settings.max_tokens_limit
    props["user"]["anyOf"][0]["maxLength"] = settings.max_content_chars
    props["chain"]["anyOf"][0]["enum"] = chains
    efforts = sorted(settings.reasoning_effort_set)
    if efforts:
        props["reasoning_effort"]["anyOf"][0]["enum"] = efforts
    else:  # none allowed: only null (or leaving it out) passes
        props["reasoning_effort"]["anyOf"] = [{"type": "null"}]
    props["reasoning_effort"]["description"] = (
        "reasoning deployments only (CHAT_REASONING_DEPLOYMENTS); elsewhere a 400 unsupported_parameter"
    )
    props["temperature"]["description"] = "not for reasoning deployments (a 400 unsupported_parameter)"
    props["fallback_deployments"]["description"] = (
        "tried in order when the deployment fails before its first token; [] turns "
        "CHAT_FALLBACK_DEPLOYMENTS off; not with several deployments"
    )
    defs["Message"]["properties"]["content"]["maxLength"] = settings.max_content_chars
    return schema, defs


_JSON = "application/json"
#: A request id (`start.id`, `X-Request-Id`) or an AI SDK chat id.
_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$"},
}
_STOPPED = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": {"type": "string"}, "status": {"enum": ["stopped", "stopping"]}},
}


def _route_errors(error_ref: dict[str, str], *statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": "see docs/protocol.md",
            "content": {"application/json": {"schema": error_ref}},
        }
        for status in statuses
    }


@lru_cache(maxsize=4)
def _document(settings_key: tuple[int, int, int, int, str], chains: tuple[str, ...]) -> dict[str, Any]:
    max_messages, max_chars, max_tokens, max_body, efforts = settings_key
    settings = Settings(
        CHAT_REASONING_EFFORTS=efforts,
        CHAT_MAX_MESSAGES=max_messages,
        CHAT_MAX_CONTENT_CHARS=max_chars,
        CHAT_MAX_TOKENS_LIMIT=max_tokens,
        CHAT_MAX_BODY_BYTES=max_body,
    )
    request, defs = _request_schema(settings, list(chains))
    error_ref = {"$ref": _REF.format(model="Error")}
    responses: dict[str, Any] = {
        "200": {
            "description": "The answer: an event stream (SSE or NDJSON), or one JSON object (stream=false)",
            "headers": {"X-Request-Id": {"schema": {"type": "string"}}},
            "content": {
                # Before OpenAPI 3.2 the schema of an event stream describes one event.
                "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/json": {"schema": {"$ref": _REF.format(model="Answer")}},
            },
        }
    }
    for status, description in _ERRORS.items():
        responses[status] = {
            "description": description,
            "headers": {"X-Request-Id": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": error_ref}},
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Streaming chat",
            "version": "1.0.0",
            "description": f"Protocol: docs/protocol.md. The body may be at most {max_body} bytes.",
        },
        "paths": {
            "/api/chat": {
                "post": {
                    "operationId": "chat",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF.format(model="ChatRequest")}}
                        },
                    },
                    "responses": responses,
                }
            },
            "/api/chat/{id}/stream": {
                "get": {
                    "operationId": "resume",
                    "description": "Resume a resumable stream after Last-Event-ID (docs/protocol.md)",
                    "parameters": [
                        _ID_PARAMETER,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                        {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": responses["200"],
                        "204": {"description": "nothing to resume (no running stream by that chat id)"},
                        **_route_errors(error_ref, "400", "404", "406", "410", "503"),
                    },
                }
            },
            "/api/chat/{id}/stop": {
                "post": {
                    "operationId": "stop",
                    "description": "Stop a running stream: it ends with finish_reason cancelled, usage",
                    "parameters": [_ID_PARAMETER],
                    "responses": {
                        "200": {
                            "description": "stopped",
                            "content": {"application/json": {"schema": _STOPPED}},
                        },
                        "202": {
                            "description": "stopping",
                            "content": {"application/json": {"schema": _STOPPED}},
                        },
                        **_route_errors(error_ref, "404", "409", "410", "503"),
                    },
                }
            },
        },
        "components": {
            "schemas": {**defs, "ChatRequest": request, "Error": ERROR_SCHEMA, "Answer": ANSWER_SCHEMA}
        },
    }


def openapi_document(settings: Settings, chains: list[str]) -> dict[str, Any]:
    key = (
        settings.max_messages,
        settings.max_content_chars,
        settings.max_tokens_limit,
        settings.max_body_bytes,
        ",".join(sorted(settings.reasoning_effort_set)),
    )
    return _document(key, tuple(sorted(chains)))
