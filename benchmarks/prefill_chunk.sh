#!/usr/bin/env bash
# Prefill cost of --prefill-chunk: TTFT of a 1-token generation for a ~1,700-token prompt (220 "Item i is
# <colour>." sentences), 5 requests per setting, one service at a time on port 18555, gemma-3-270m and
# qwen2.5-coder-0.5b, chunk 100000 (one pass: the old behaviour), 512, 256 and 128.
# Usage: BIN=$CARGO_TARGET_DIR/debug benchmarks/prefill_chunk.sh
BIN=${BIN:-target/debug}/inference
cd "$(dirname "$0")/.."
PROMPT=$(python3 -c 'c=["red","green","blue","amber","violet","silver","ochre","teal"]; print("".join(f"Item {i} is {c[i%8]}. " for i in range(220)))')
for model in gemma-3-270m-q4_k_m.gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  for chunk in 100000 512 256 128; do
    $BIN --model models/$model --port 18555 --host 127.0.0.1 --context 4096 --prefill-chunk $chunk >/dev/null 2>&1 &
    pid=$!
    until curl -sf http://127.0.0.1:18555/health >/dev/null; do sleep 0.3; done
    ts=()
    for i in 1 2 3 4 5; do
      t=$(curl -s http://127.0.0.1:18555/generate -H 'content-type: application/json' \
        -d "$(python3 -c 'import json,sys; print(json.dumps({"prompt":sys.argv[1],"max_tokens":1,"temp":0,"chat":False,"stream":False}))' "$PROMPT")" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["stats"]["ttft_ms"] if "stats" in d else d.get("ttft_ms", -1)))' 2>/dev/null)
      ts+=($t)
    done
    kill $pid; wait $pid 2>/dev/null
    echo "$model chunk=$chunk ttft_ms: ${ts[*]}"
  done
done
