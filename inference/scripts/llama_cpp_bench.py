"""llama.cpp's speed on a GGUF file, measured the same way as inference_bench measures ours.

Usage: llama_cpp_bench.py MODEL --threads N --prefill 128,512 --decode 128 --runs 3 --text FILE
Prints one JSON object: {"prefill": {"128": [tok/s per run], ...}, "decode": [tok/s per run]}.
Prefill: one eval of the first N prompt tokens from an empty cache. Decode: after a 16-token
prompt, N greedy steps (argmax of the last logits, one eval each).
"""
import argparse
import json
import time

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--prefill", default="128,512")
ap.add_argument("--decode", type=int, default=128)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--text", required=True)
a = ap.parse_args()

sizes = [int(s) for s in a.prefill.split(",") if s]
need = max(sizes + [16]) + 1
llm = Llama(model_path=a.model, n_ctx=max(need, 16 + a.decode) + 8, n_batch=512, n_ubatch=512,
            n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
text = open(a.text, encoding="utf-8").read()
toks = llm.tokenize(text.encode(), add_bos=False, special=False)
while len(toks) < need:
    toks = toks + toks
out = {"prefill": {}, "decode": []}
for n in sizes:
    rates = []
    for _ in range(a.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks[:n])
        rates.append(n / (time.perf_counter() - t0))
    out["prefill"][str(n)] = rates
for _ in range(a.runs):
    llm.reset()
    llm.eval(toks[:16])
    t0 = time.perf_counter()
    for _ in range(a.decode):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    out["decode"].append(a.decode / (time.perf_counter() - t0))
print(json.dumps(out))
