#!/usr/bin/env python3
"""The churn stream of benchmarks/soak.sh, for --duration seconds, from two kinds of workers:
- fresh (--fresh-workers, default 2): every request a prompt never sent before (one in 40 between 12k
  and 16k characters, the others short), so the learned policy embeds it and the cache misses;
- identity (--identity-workers, default 1): one of 16 recurring prompts (cache hits once answered), so
  requests are cheap and identities churn fast.
Every request carries a fresh random X-API-Key (unknown to the router, so it must fall back to the
caller's address) and a fresh X-Forwarded-For (not from a trusted proxy, so it must be ignored), except
every third one, which carries one of --known-keys keys with a limit of their own (their buckets, and
their /last_request_stats records, are real state in the router).
Writes one CSV row per request (t_s, worker, status, latency_ms, prompt_chars, key_kind).

  churn.py --write-keys keys.json --known-keys 2000     # the router's --rate-limit-overrides file
  churn.py --url http://127.0.0.1:18380 --duration 600 --known-keys 2000 --out churn.csv
"""
import argparse
import csv
import json
import random
import secrets
import threading
import time
import urllib.error
import urllib.request

WORDS = ("river stone cloud matrix vector python rust compile window garden binary tensor ocean "
         "harbor lantern ember quartz signal meadow cipher orbit falcon glacier prism summit").split()


def known_key(i: int) -> str:
    return f"soak-known-{i:05d}"


def prompt(rng: random.Random, n: int) -> str:
    chars = rng.randint(12_000, 16_000) if n % 40 == 39 else rng.randint(20, 300)
    out, size = [f"Request {n}:"], 0
    while size < chars:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:chars]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--known-keys", type=int, default=2000)
    ap.add_argument("--out", default="churn.csv")
    ap.add_argument("--write-keys", help="write the overrides file for the known keys and exit")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fresh-workers", type=int, default=2)
    ap.add_argument("--identity-workers", type=int, default=1)
    a = ap.parse_args()
    if a.write_keys:
        with open(a.write_keys, "w") as f:
            json.dump({known_key(i): {"rps": 1000, "burst": 1000} for i in range(a.known_keys)}, f)
        return
    t0 = time.monotonic()
    lock = threading.Lock()
    f = open(a.out, "w", newline="")
    w = csv.writer(f)
    w.writerow(["t_s", "worker", "status", "latency_ms", "prompt_chars", "key_kind"])
    counts = {"n": 0}

    def worker(kind: str, seed: int) -> None:
        rng = random.Random(seed)
        i = 0
        while time.monotonic() - t0 < a.duration:
            p = prompt(rng, seed * 1_000_000 + i) if kind == "fresh" else f"Recurring question {i % 16}: name a colour."
            known = i % 3 == 2
            key = known_key(rng.randrange(a.known_keys)) if known else secrets.token_hex(16)
            xff = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            body = json.dumps({"prompt": p, "max_tokens": 2, "temp": 0, "stream": False}).encode()
            req = urllib.request.Request(f"{a.url}/generate", data=body, method="POST", headers={
                "content-type": "application/json", "x-api-key": key, "x-forwarded-for": xff})
            t = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=180) as r:
                    r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                e.read()
                status = e.code
            except Exception as e:  # transport errors count as errors too
                status = f"transport:{type(e).__name__}"
            with lock:
                w.writerow([round(t - t0, 1), kind, status, round((time.monotonic() - t) * 1e3, 1), len(p),
                            "known" if known else "random"])
                counts["n"] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=("fresh", a.seed + k)) for k in range(a.fresh_workers)]
    threads += [threading.Thread(target=worker, args=("identity", a.seed + 100 + k)) for k in range(a.identity_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    f.close()
    n = counts["n"]
    print(f"{n} requests")


if __name__ == "__main__":
    main()
