"""KServe v2 (Open Inference Protocol) REST API under /v2, for tensor (non-LLM) deployments. JSON tensors only.

The model name is the deployment name. Errors use the protocol's shape ``{"error": "<message>"}``; a bad request
(unknown input, wrong datatype or shape, data of the wrong length) is a 400 that names what the model expects,
and the server keeps serving. Requests are counted and timed by the agent's metrics middleware (per route).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from edgectl_agent import __version__
from edgectl_agent.api import check_json_values
from edgectl_agent.deployments import Serving, run_on_active
from edgectl_agent.errors import AgentError
from edgectl_agent.runtimes.base import TensorModel, TensorSpec

router = APIRouter(prefix="/v2")
ARTIFACT_HEADER = "X-Edgectl-Artifact"

_INT_RANGES = {
    "INT8": (-2**7, 2**7 - 1), "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
    "INT64": (-2**63, 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
_FLOATS = ("FP16", "FP32", "FP64")


class _TensorJSON(JSONResponse):
    """Model outputs may hold inf/NaN: written as the JSON extensions Infinity/NaN (Python, JS parse them) rather
    than failing the request."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode()


class KServeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status)


def _tensor_model(request: Request, name: str) -> Serving:
    serving = request.app.state.agent.deployments.serving.get(name)
    if serving is None:
        known = sorted(n for n, s in request.app.state.agent.deployments.serving.items() if s.model.kind == "tensor")
        raise KServeError(404, f"model '{name}' does not exist on this device (tensor models serving: "
                               f"{', '.join(known) or 'none'})")
    if serving.model.kind != "tensor":
        raise KServeError(404, f"model '{name}' is a language model, not a tensor model: use the OpenAI API "
                               f"under /v1 (POST /v1/chat/completions with \"model\": \"{name}\")")
    return serving


def _fmt(spec: TensorSpec) -> str:
    return f"{spec.datatype} {list(spec.shape)}"


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for x in data:
            _flatten(x, out)
    else:
        out.append(data)


def _check_values(name: str, spec: TensorSpec, flat: list[Any]) -> None:
    dt = spec.datatype
    for i, x in enumerate(flat):
        if dt == "BOOL":
            ok = isinstance(x, bool)
        elif dt == "BYTES":
            ok = isinstance(x, str)
        elif dt in _FLOATS:
            ok = isinstance(x, (int, float)) and not isinstance(x, bool)
        else:
            lo, hi = _INT_RANGES.get(dt, (-math.inf, math.inf))
            ok = isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
        if not ok:
            raise KServeError(400, f"input '{name}': data[{i}] = {json.dumps(x)[:40]} is not a {dt} value "
                                   f"(the model expects {_fmt(spec)})")


def _parse_inputs(body: dict[str, Any], model: TensorModel) -> dict[str, tuple[str, list[int], list[Any]]]:
    specs = {s.name: s for s in model.inputs}
    expected = "; ".join(f"'{s.name}': {_fmt(s)}" for s in model.inputs) + " (-1 = any size)"
    raw = body.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise KServeError(400, f"the request needs \"inputs\": a list of tensors; the model expects {expected}")
    parsed: dict[str, tuple[str, list[int], list[Any]]] = {}
    for t in raw:
        if not isinstance(t, dict):
            raise KServeError(400, f"each input must be an object with name, shape, datatype and data; "
                                   f"the model expects {expected}")
        name = t.get("name")
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise KServeError(400, f"input {json.dumps(name)[:80]} is not an input of model '{model.name}'; "
                                   f"it expects {expected}")
        if name in parsed:
            raise KServeError(400, f"input '{name}' is given twice")
        datatype, shape, data = t.get("datatype"), t.get("shape"), t.get("data")
        if datatype != spec.datatype:
            raise KServeError(400, f"input '{name}': datatype {json.dumps(datatype)[:40]} does not match the model's "
                                   f"{spec.datatype} (expected {_fmt(spec)})")
        if (not isinstance(shape, list) or
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise KServeError(400, f"input '{name}': shape must be a list of non-negative integers "
                                   f"(expected {_fmt(spec)}, -1 = any size)")
        if len(shape) != len(spec.shape) or any(e >= 0 and d != e for d, e in zip(shape, spec.shape)):
            raise KServeError(400, f"input '{name}': shape {shape} does not match the model's {list(spec.shape)} "
                                   f"(expected {_fmt(spec)}, -1 = any size)")
        if data is None:
            raise KServeError(400, f"input '{name}' has no \"data\" (expected {_fmt(spec)})")
        flat: list[Any] = []
        _flatten(data, flat)
        if len(flat) != math.prod(shape):
            raise KServeError(400, f"input '{name}': {len(flat)} values for shape {shape}, which needs "
                                   f"{math.prod(shape)} (expected {_fmt(spec)})")
        _check_values(name, spec, flat)
        parsed[name] = (datatype, shape, flat)
    missing = [n for n in specs if n not in parsed]
    if missing:
        raise KServeError(400, f"missing input(s) {missing}; the model expects {expected}")
    return parsed


def _parse_outputs(body: dict[str, Any], model: TensorModel) -> list[str] | None:
    raw = body.get("outputs")
    if raw is None:
        return None
    names = [o.name for o in model.outputs]
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise KServeError(400, f"\"outputs\" must be a list of {{\"name\": ...}} objects; the model's outputs: {names}")
    wanted = [o["name"] for o in raw]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise KServeError(400, f"unknown output(s) {unknown}; the model's outputs: {names}")
    return wanted or None


# -- endpoints -----------------------------------------------------------------------------------------------
@router.get("")
def server_metadata() -> dict[str, Any]:
    return {"name": "edgectl-agent", "version": __version__, "extensions": []}


@router.get("/health/live")
def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    reasons = request.app.state.agent.deployments.not_ready()
    return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)


@router.get("/models/{name}")
def model_metadata(name: str, request: Request) -> JSONResponse:
    try:
        serving = _tensor_model(request, name)
    except KServeError as e:
        return e.response()
    model: TensorModel = serving.model  # type: ignore[assignment]
    return JSONResponse({"name": name, "versions": [serving.artifact.digest], "platform": model.platform,
                         "inputs": [s.as_dict() for s in model.inputs],
                         "outputs": [s.as_dict() for s in model.outputs]},
                        headers={ARTIFACT_HEADER: serving.artifact.digest})


@router.get("/models/{name}/ready")
def model_ready(name: str, request: Request) -> JSONResponse:
    try:
        _tensor_model(request, name)
    except KServeError as e:
        return e.response()
    return JSONResponse({"name": name, "ready": True})


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request) -> JSONResponse:
    try:
        _tensor_model(request, name)  # an unknown model is a 404 before the body is judged
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise KServeError(400, f"the request body is not valid JSON ({e}); the binary tensor extension "
                                   "is not supported") from e
        if not isinstance(body, dict):
            raise KServeError(400, "the request body must be a JSON object with \"inputs\"")
        try:
            check_json_values(body, finite=False)  # NaN and Infinity are tensor values; lone surrogates are not text
        except ValueError as e:
            raise KServeError(400, f"invalid request body: {e}") from None

        def run(serving: Serving) -> list[dict[str, Any]]:  # checked against the model it runs on
            model: TensorModel = serving.model  # type: ignore[assignment]
            return model.infer(_parse_inputs(body, model), _parse_outputs(body, model))

        try:
            serving, result = await run_on_active(lambda: _tensor_model(request, name), run)
        except AgentError as e:
            hint = f" ({e.hint})" if e.hint else ""
            raise KServeError(e.status, e.message + hint) from e
    except KServeError as e:
        return e.response()
    out: dict[str, Any] = {"model_name": name, "model_version": serving.artifact.digest, "outputs": result}
    if isinstance(body.get("id"), str):
        out["id"] = body["id"]
    return _TensorJSON(out, headers={ARTIFACT_HEADER: serving.artifact.digest})
