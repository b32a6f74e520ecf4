"""Drives a polyllm model service with the official `openai` client. Usage: openai_client.py BASE_URL

Exits non-zero (with the failing check) unless chat and text completions work, streaming and not.
"""
import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base, api_key="unused")

models = client.models.list()
model = models.data[0].id
assert model, models

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is 2 + 3? Answer with the number only."}],
    max_tokens=16,
    temperature=0,
)
answer = chat.choices[0].message.content
assert "5" in answer, answer
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage
print("chat:", repr(answer))

pieces = []
usage = None
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2 + 3? Answer with the number only."}],
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
streamed = "".join(pieces)
assert "5" in streamed, streamed
assert usage is not None and usage.completion_tokens > 0, usage
print("chat stream:", repr(streamed))

comp = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=12, temperature=0)
assert comp.choices[0].text, comp
print("completion:", repr(comp.choices[0].text))
streamed = "".join(c.choices[0].text for c in client.completions.create(model=model, prompt="def add(a, b):", max_tokens=12, temperature=0, stream=True) if c.choices)
assert streamed == comp.choices[0].text, (streamed, comp.choices[0].text)

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=0)
    raise SystemExit("max_tokens=0 was accepted")
except Exception as e:  # openai.BadRequestError
    assert getattr(e, "status_code", None) == 400, e
print("ALL OK")
