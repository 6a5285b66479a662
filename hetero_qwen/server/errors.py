"""Errors a request can meet, answered in the OpenAI error JSON shape:
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def unsupported(field: str, why: str = "") -> ApiError:
    return ApiError(400, f"`{field}` is not supported by hetero-qwen serve{why}", field, code="unsupported_field")


def queue_full(waiting: int) -> ApiError:
    return ApiError(503, f"the server is busy: {waiting} requests are already waiting; retry later",
                    type="server_busy", code="queue_full")
