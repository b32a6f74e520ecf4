"""The official openai client against the router (run by router/tests/router.rs).

Usage: python3 openai_client.py http://127.0.0.1:PORT/v1
Prints one JSON line with what it saw; exits non-zero on the first failed check.
"""
import json
import sys

import openai


def main(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=300)

    ids = [m.id for m in client.models.list().data]
    assert "auto" in ids and "m1" in ids and "m2" in ids, ids

    chat = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Say hello in one word."}],
        max_tokens=6,
        temperature=0,
    )
    content = chat.choices[0].message.content
    assert isinstance(content, str) and content, chat
    assert chat.usage.completion_tokens >= 1, chat.usage
    assert chat.choices[0].finish_reason in ("stop", "length"), chat

    pieces, usage, models = [], None, set()
    for chunk in client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        models.add(chunk.model)
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
    assert pieces, "no streamed chat content"
    assert usage is not None and usage.completion_tokens >= 1, usage
    assert models == {chat.model}, models

    comp = client.completions.create(model="m1", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert comp.choices[0].text, comp
    assert comp.model == "gemma-3-270m", comp.model

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="auto", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == comp.choices[0].text, (streamed, comp.choices[0].text)

    try:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=0)
        raise AssertionError("max_tokens=0 accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400

    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404

    print(json.dumps({
        "ok": True,
        "chat_model": chat.model,
        "chat_text": content,
        "stream_text": "".join(pieces),
        "completion_model": comp.model,
        "completion_text": comp.choices[0].text,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
