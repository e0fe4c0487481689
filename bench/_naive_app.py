"""The `naive` baseline: a plain FastAPI app that calls the model once per request.

`python -m bench._naive_app --artifact DIR --port P` serves `POST /predict` with the same body as
a model server (`{"inputs": [{"text": ...}]}`) the way a first FastAPI service usually looks: a
plain `def` route (FastAPI runs it in its thread pool), the op's `predict_batch` on the request's
own inputs, the answer returned as a dict. No batching across requests, no queue, no gateway.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from models.ops import load_op
from models.schemas import EmbedIn


class Request(BaseModel):
    inputs: list[EmbedIn]
    version: str | None = None


def build_app(artifact: str, torch_threads: int) -> FastAPI:
    import torch

    torch.set_num_threads(torch_threads)
    op = load_op(artifact)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/predict")
    def predict(body: Request) -> dict:
        return {"outputs": [o.model_dump() for o in op.predict_batch(body.inputs)]}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--torch-threads", type=int, default=2)
    a = p.parse_args()
    uvicorn.run(build_app(a.artifact, a.torch_threads), host="127.0.0.1", port=a.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
