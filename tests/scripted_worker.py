"""`python -m tests.scripted_worker PORT LOG`: a stand-in for one `vllm serve` replica that
records every completion request (headers and body, one JSON line each in LOG) and streams a
fixed answer tagged with its port. Why: it pins what the router passes through and where it
routes, in seconds and without an engine (tests/e2e/test_router_contract.py)."""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def build(port: int, log: str) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": "tiny", "object": "model", "root": "tiny", "max_model_len": 1024}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        with open(log, "a") as f:
            f.write(json.dumps({"headers": dict(request.headers), "body": body}) + "\n")

        def events():
            for i in range(3):
                choice = {
                    "index": 0,
                    "text": f"t{i}",
                    "token_ids": [10 + i],
                    "finish_reason": "length" if i == 2 else None,
                    "stop_reason": None,
                }
                yield f"data: {json.dumps({'choices': [choice], 'worker': port})}\n\n"
            usage = {
                "prompt_tokens": len(body["prompt"]),
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 2},
            }
            yield f"data: {json.dumps({'choices': [], 'usage': usage, 'worker': port})}\n\n"
            yield "data: [DONE]\n\n"

        async def slow_events():
            """A long stream (max_tokens >= 1000) that records whether it was cut off."""
            finished = False
            try:
                for _ in range(200):
                    choice = {"index": 0, "text": "x", "token_ids": [10], "finish_reason": None}
                    yield f"data: {json.dumps({'choices': [choice], 'worker': port})}\n\n"
                    await asyncio.sleep(0.05)
                finished = True
            finally:
                with open(log, "a") as f:
                    f.write(json.dumps({"stream_end": "finished" if finished else "aborted"}))
                    f.write("\n")

        if body.get("max_tokens", 0) >= 1000:
            return StreamingResponse(slow_events(), media_type="text/event-stream")
        return StreamingResponse(events(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    uvicorn.run(build(port, sys.argv[2]), host="127.0.0.1", port=port, log_level="warning")
