"""Resident memory of model services against their GGUF file and llama.cpp, side by side.

Usage: service_memory.py --bin LABEL=PATH [--bin LABEL=PATH ...] --models-dir models [--threads 2]

For each model file and each `inference` binary: start the service, wait for /health, read the
process's resident memory (VmRSS, and its anonymous part RssAnon) after load, send one greedy
request with a prompt of about 512 tokens, and read it again. llama.cpp (llama-cpp-python, where
installed) does the same in a child process: load with its default mmap, then eval the same
number of tokens. Prints a markdown table; figures in MiB, ratios to the file size.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

MODELS = [
    "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
]
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 40


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def service(binary, model, threads):
    port = free_port()
    p = subprocess.Popen([binary, "--model", model, "--host", "127.0.0.1", "--port", str(port),
                          "--threads", str(threads), "--context", "1024"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert time.time() - t0 < 300, "service did not start"
            assert p.poll() is None, "service exited"
            time.sleep(0.2)
        time.sleep(0.5)
        loaded = rss(p.pid)
        r = post(f"http://127.0.0.1:{port}/generate",
                 {"prompt": TEXT, "max_tokens": 1, "temperature": 0, "stream": False, "chat": False})
        after = rss(p.pid)
        return loaded, after, r["prompt_tokens"]
    finally:
        p.kill()
        p.wait()


LLAMA = """
import sys, json
from llama_cpp import Llama
def rss():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'RssAnon', 'RssFile'):
            out[k] = int(v.split()[0]) / 1024
    return out
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_batch=512, n_threads=int(sys.argv[2]), verbose=False)
loaded = rss()
toks = llm.tokenize(sys.argv[3].encode(), add_bos=True)[:int(sys.argv[4])]
llm.eval(toks)
print(json.dumps([loaded, rss()]))
"""


def llama_cpp(model, threads, n_tokens):
    try:
        out = subprocess.run([sys.executable, "-c", LLAMA, model, str(threads), TEXT, str(n_tokens)],
                             capture_output=True, text=True, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print(f"llama.cpp skipped: {e}", file=sys.stderr)
        return None
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH of an inference binary")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    print("| model | file MiB | engine | RSS after load | x file | RSS after a 512-token prompt | x file | anonymous after prompt |")
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        path = os.path.join(a.models_dir, name)
        if not os.path.exists(path):
            continue
        size = os.path.getsize(path) / 2**20
        n_tokens = 512
        for label, binary in bins:
            loaded, after, n_tokens = service(binary, path, a.threads)
            print(f"| {name} | {size:.0f} | {label} | {loaded['VmRSS']:.0f} | {loaded['VmRSS'] / size:.2f}x | "
                  f"{after['VmRSS']:.0f} | {after['VmRSS'] / size:.2f}x | {after['RssAnon']:.0f} |", flush=True)
        r = llama_cpp(path, a.threads, n_tokens)
        if r:
            loaded, after = r
            print(f"| {name} | {size:.0f} | llama.cpp (mmap) | {loaded['VmRSS']:.0f} | {loaded['VmRSS'] / size:.2f}x | "
                  f"{after['VmRSS']:.0f} | {after['VmRSS'] / size:.2f}x | {after['RssAnon']:.0f} |", flush=True)


main()
