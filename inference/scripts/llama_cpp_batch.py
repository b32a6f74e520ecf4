"""llama.cpp's batched decode on a GGUF file, measured the way inference_bench --concurrency
measures ours: N sequences with their own ids in one context (what llama.cpp's server does with
parallel slots), all prompts prefilled in one llama_decode, then one llama_decode per step holding
the next token of every sequence.

Usage: llama_cpp_batch.py MODEL --threads T --concurrency 1,2,4,8 --decode 64 --runs 3 < prompts.json
where prompts.json is a JSON list of token-id lists (one prompt per sequence, at least max N).
Prints one JSON object: {"N": [{"decode_s": s, "ttft_s": s, "steps_s": [s per step]}, per run], ...}.
Greedy: each sequence's next token is the argmax of its logits.
"""
import argparse
import ctypes
import json
import sys
import time

import numpy as np
import llama_cpp as L

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--concurrency", default="1,2,4,8")
ap.add_argument("--decode", type=int, default=64)
ap.add_argument("--runs", type=int, default=3)
a = ap.parse_args()
prompts = json.load(sys.stdin)
levels = [int(s) for s in a.concurrency.split(",") if s]
most = max(levels)
longest = max(len(p) for p in prompts[:most])

L.llama_backend_init()
mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(a.model.encode(), mp)
assert model, "cannot load " + a.model
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
cp = L.llama_context_default_params()
cp.n_ctx = most * (longest + a.decode + 8)
cp.n_batch = max(512, most * longest)
cp.n_ubatch = cp.n_batch
cp.n_seq_max = most
cp.n_threads = a.threads
cp.n_threads_batch = a.threads
ctx = L.llama_init_from_model(model, cp)
assert ctx, "cannot create a context"
batch = L.llama_batch_init(cp.n_batch, 0, most)


def fill(entries):
    """entries: (token, pos, seq, want_logits) tuples."""
    batch.n_tokens = len(entries)
    for i, (tok, pos, seq, logits) in enumerate(entries):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits


def argmax(i):
    p = L.llama_get_logits_ith(ctx, i)
    return int(np.argmax(np.ctypeslib.as_array(p, shape=(n_vocab,))))


out = {}
for n in levels:
    runs = []
    for _ in range(a.runs):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        entries, last = [], []
        for s in range(n):
            p = prompts[s]
            for j, tok in enumerate(p):
                entries.append((tok, j, s, j == len(p) - 1))
            last.append(len(entries) - 1)
        fill(entries)
        assert L.llama_decode(ctx, batch) == 0
        nxt = [argmax(i) for i in last]
        ttft = time.perf_counter() - t0
        pos = [len(prompts[s]) for s in range(n)]
        steps = []
        t1 = time.perf_counter()
        for _ in range(a.decode - 1):
            ts = time.perf_counter()
            fill([(nxt[s], pos[s], s, True) for s in range(n)])
            assert L.llama_decode(ctx, batch) == 0
            nxt = [argmax(s) for s in range(n)]
            pos = [p + 1 for p in pos]
            steps.append(time.perf_counter() - ts)
        runs.append({"decode_s": time.perf_counter() - t1, "ttft_s": ttft, "steps_s": steps})
    out[str(n)] = runs
print(json.dumps(out))
