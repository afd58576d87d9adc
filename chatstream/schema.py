"""The chat request as the caller sends it, validated before any model call.

Limits come from settings at run time, so they travel in the validation context instead of
being baked into the field definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Limits:
    max_messages: int = 50
    max_content_chars: int = 16_000
    max_tokens: int = 4096
    max_deployments: int = 4
    reasoning_efforts: frozenset[str] = frozenset({"low", "medium", "high"})


def _limits(info: ValidationInfo) -> Limits:
    context = info.context or {}
    return context.get("limits") or Limits()


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def _content_length(cls, value: str, info: ValidationInfo) -> str:
        limit = _limits(info).max_content_chars
        if len(value) > limit:
            raise PydanticCustomError(
                "content_too_long",
                "content is {n} characters long; the limit is {limit}",
                {"n": len(value), "limit": limit},
            )
        return value


class ChatRequest(BaseModel):
    """OpenAI-style `messages`, or seed 004's `{"user": "..."}` shorthand.

    Every rule is a field validator so each error carries the field it is about.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = Field(None, min_length=1)
    messages: list[Message] = Field(default_factory=list, validate_default=True)
    chain: str | None = Field(None, min_length=1, max_length=64)
    stream: bool = True
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    #: Reasoning deployments only; one of CHAT_REASONING_EFFORTS.
    reasoning_effort: str | None = None
    #: Several deployments answering at once (checked against CHAT_DEPLOYMENTS by the service).
    deployments: list[str] | None = Field(None, min_length=1)
    #: Deployments to try in order when the one answering fails before its first token (checked against
    #: the allow-list by the service); `[]` turns CHAT_FALLBACK_DEPLOYMENTS off for this request.
    fallback_deployments: list[str] | None = None
    #: A conversation thread kept by the server (graph chains): send only the new message.
    thread_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{8,128}$")
    #: Keep the run going past a dropped connection and let the caller resume it (default:
    #: CHAT_RESUMABLE); see `GET /api/chat/{id}/stream`.
    resumable: bool | None = None
    #: Another name the stream can be resumed by (the AI SDK's chat id); set by a protocol, never sent.
    _resume_alias: str | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _object_body(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        return data

    @field_validator("user")
    @classmethod
    def _user_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = _limits(info).max_content_chars
        if value is not None and len(value) > limit:
            raise PydanticCustomError(
                "content_too_long",
                "user is {n} characters long; the limit is {limit}",
                {"n": len(value), "limit": limit},
            )
        return value

    @field_validator("messages")
    @classmethod
    def _conversation(cls, value: list[Message], info: ValidationInfo) -> list[Message]:
        has_user = info.data.get("user") is not None
        if has_user and value:
            raise ValueError("send either 'messages' or 'user', not both")
        if has_user:
            return value
        if not value:
            raise ValueError("at least one message is required (or send 'user')")
        limit = _limits(info).max_messages
        if len(value) > limit:
            raise PydanticCustomError(
                "too_many_messages",
                "{n} messages sent; the limit is {limit}",
                {"n": len(value), "limit": limit},
            )
        if value[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = _limits(info).max_tokens
        if value is not None and value > limit:
            raise PydanticCustomError(
                "option_out_of_range", "max_tokens may be at most {limit}", {"limit": limit}
            )
        return value

    @field_validator("reasoning_effort")
    @classmethod
    def _reasoning_effort(cls, value: str | None, info: ValidationInfo) -> str | None:
        allowed = _limits(info).reasoning_efforts
        if value is not None and value not in allowed:
            raise PydanticCustomError(
                "unsupported_value",
                "reasoning_effort must be one of: {allowed}",
                {"allowed": ", ".join(sorted(allowed)) or "(none allowed)"},
            )
        return value

    @field_validator("deployments")
    @classmethod
    def _deployments(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        limit = _limits(info).max_deployments
        if len(value) > limit:
            raise ValueError(f"{len(value)} deployments named; the limit is {limit}")
        if any(not name.strip() for name in value):
            raise ValueError("deployment names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("each deployment may be named once")
        if len(value) > 1 and info.data.get("stream") is False:
            raise ValueError("several deployments can only stream; send 'stream': true")
        return value

    @field_validator("fallback_deployments")
    @classmethod
    def _fallback_deployments(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        limit = _limits(info).max_deployments
        if len(value) > limit:
            raise ValueError(f"{len(value)} fallback deployments named; the limit is {limit}")
        if any(not name.strip() for name in value):
            raise ValueError("deployment names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("each deployment may be named once")
        return value

    @model_validator(mode="after")
    def _one_thread_one_deployment(self) -> ChatRequest:
        if self.thread_id is not None and self.deployments is not None and len(self.deployments) > 1:
            raise PydanticCustomError(
                "thread_with_deployments", "a thread continues with one deployment; name at most one"
            )
        return self

    @property
    def resume_alias(self) -> str | None:
        return self._resume_alias

    def set_resume_alias(self, alias: str | None) -> None:
        self._resume_alias = alias

    @property
    def conversation(self) -> list[Message]:
        """The conversation with the shorthand expanded."""
        if self.user is not None:
            return [Message(role="user", content=self.user)]
        return self.messages
