"""What users write by hand to serve a classifier: FastAPI calling `pipeline("text-classification")`
per request.

The baseline of benchmarks/serve_load.py, with the same request and answer shapes as `warmstart
serve`'s /predict (so the same clients load both). Plain on purpose: a sync endpoint (FastAPI runs
it in its thread pool), the pipeline's defaults (PyTorch fp32, the model's own truncation at 512
tokens), top label only.

    .venv/bin/python benchmarks/hf_pipeline_server.py MODEL_FOLDER --port 8001
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from transformers import pipeline  # noqa: E402


class Texts(BaseModel):
    texts: list[str]


def app_for(model: str) -> FastAPI:
    classify = pipeline("text-classification", model=model, device="cpu", truncation=True)
    app = FastAPI()
    served = {"predict": 0}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict:  # the counter serve_load reads; one pipeline call per request
        return {"batching": {"forward_passes": served}}

    @app.post("/predict")
    def predict(body: Texts) -> dict:
        served["predict"] += 1
        return {
            "predictions": [
                {"label": r["label"], "score": r["score"]} for r in classify(body.texts)
            ]
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=8001)
    a = ap.parse_args()
    uvicorn.run(app_for(a.model), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
