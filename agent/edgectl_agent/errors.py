"""One error root for the agent. Each error knows its HTTP status and carries a hint that says how to fix it.

Runtime (llama.cpp), filesystem and request failures are translated into these at the boundary, so every endpoint
answers ``{"error": {"message", "type", "hint", "param", "code"}}`` (the OpenAI error shape, plus ``hint``).
"""

from __future__ import annotations


class AgentError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None,
                 type: str | None = None, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          "hint": self.hint}}


class BadRequest(AgentError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(AgentError):
    status = 401
    type = "authentication_error"


class Forbidden(AgentError):
    """Authenticated, but not allowed: a deployment without a valid signature on an agent that requires one."""

    status = 403
    type = "forbidden"


class NotFound(AgentError):
    status = 404
    type = "not_found_error"


class Conflict(AgentError):
    status = 409
    type = "conflict"


class Unprocessable(AgentError):
    """The request was well-formed but could not be carried out (digest mismatch, model failed to load)."""

    status = 422
    type = "unprocessable"


class InsufficientStorage(AgentError):
    status = 507
    type = "insufficient_storage"


class ModelUnavailable(AgentError):
    status = 503
    type = "model_unavailable"


class RuntimeFailure(AgentError):
    """A runtime could not load, smoke-test or run a model; the message is the runtime's own."""

    status = 422
    type = "runtime_error"
