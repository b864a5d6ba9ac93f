"""sentence-transformers on PyTorch (CPU): texts/s of model.encode(texts, batch_size=32) for the
texts in a JSON-lines file, after a warm-up; prints one number (the same work the embedder's
`embed` subcommand times: tokenisation, the forward passes, pooling and normalisation)."""
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(sys.argv[1], device="cpu")
texts = [json.loads(line) for line in open(sys.argv[2])]
model.encode(texts[:64], batch_size=32)
started = time.perf_counter()
model.encode(texts, batch_size=32, normalize_embeddings=True)
elapsed = time.perf_counter() - started
print(f"{len(texts) / elapsed:.1f}")
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
