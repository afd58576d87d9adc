"""Azure OpenAI error bodies, shaped like the real ones (see shared/fixtures/openai-streams/errors).

Azure is inconsistent across layers: the API gateway answers `{"error":{"code":"401","message":...}}`
(code is a string, no type), the model service answers OpenAI-style bodies with `type`/`param`.
We reproduce each layer's shape where we know it.
"""

from __future__ import annotations

import json
from typing import Any

_CONTENT_POLICY_URL = "https://go.microsoft.com/fwlink/?linkid=2198766"


def _body(error: dict[str, Any]) -> bytes:
    return json.dumps({"error": error}, separators=(",", ":")).encode()


def access_denied() -> bytes:
    return _body(
        {
            "code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API endpoint for "
            "your resource.",
        }
    )


def resource_not_found() -> bytes:
    return _body({"code": "404", "message": "Resource not found"})


def api_version_missing() -> bytes:
    return _body({"code": "BadRequest", "message": "Missing required query parameter 'api-version'."})


def api_version_unsupported() -> bytes:
    return _body({"code": "BadRequest", "message": "API version not supported"})


def deployment_not_found() -> bytes:
    return _body(
        {
            "type": "invalid_request_error",
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist. If you created the deployment "
            "within the last 5 minutes, please wait a moment and try again.",
        }
    )


def invalid_request(message: str, param: str | None = None) -> bytes:
    return _body({"message": message, "type": "invalid_request_error", "param": param, "code": None})


def unsupported(message: str, param: str, code: str = "unsupported_parameter") -> bytes:
    """What the model service answers for a parameter (or value) a reasoning model does not take."""
    return _body({"message": message, "type": "invalid_request_error", "param": param, "code": code})


def unsupported_parameter(param: str, hint: str = "") -> bytes:
    message = f"Unsupported parameter: '{param}' is not supported with this model."
    return unsupported(message + (f" {hint}" if hint else ""), param)


def rate_limited(api_version: str, retry_after_s: float, kind: str = "token") -> bytes:
    seconds = max(1, round(retry_after_s))
    return _body(
        {
            "code": "429",
            "message": f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
            f"{api_version or 'v1'} have exceeded {kind} rate limit of your current OpenAI S0 pricing tier. "
            f"Please retry after {seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease if you "
            "would like to further increase the default rate limit.",
        }
    )


def content_filter_prompt() -> bytes:
    _safe = {"filtered": False, "severity": "safe"}
    return _body(
        {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry. To learn more about our content "
            f"filtering policies please read our documentation: {_CONTENT_POLICY_URL}",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": _safe,
                    "jailbreak": {"filtered": True, "detected": True},
                    "self_harm": _safe,
                    "sexual": _safe,
                    "violence": _safe,
                },
            },
        }
    )


_STATUS_MESSAGES = {
    408: ("Timeout", "The operation was timeout."),
    500: (
        "InternalServerError",
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("BadGateway", "Bad gateway."),
    503: (
        "ServiceUnavailable",
        "The service is temporarily unable to process your request. Please try again later.",
    ),
    504: ("GatewayTimeout", "The operation was timeout."),
}


def for_status(status: int, api_version: str = "", retry_after_s: float | None = None) -> bytes:
    """Body for an injected status fault."""
    if status == 429:
        return rate_limited(api_version, retry_after_s if retry_after_s is not None else 1.0)
    if status == 401:
        return access_denied()
    if status == 404:
        return deployment_not_found()
    if status in _STATUS_MESSAGES:
        code, message = _STATUS_MESSAGES[status]
        return _body({"code": code, "message": message})
    if status < 500:
        return invalid_request(f"Simulated fault {status}.")
    return _body({"code": str(status), "message": f"Simulated fault {status}."})
