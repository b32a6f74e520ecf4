import { describe, expect, it } from 'vitest';
import { readSse, SseParser } from './sse';

const ROUTER_STREAM =
  'event: route\ndata: {"request_id":"r1","model":"gemma-3-270m","backend":"m1","device":"cpu","confidence":1,"probabilities":{"gemma-3-270m":1},"reason":"baseline","cache":"miss"}\n\n' +
  'event: token\ndata: {"text":"Hel"}\n\n' +
  'event: token\ndata: {"text":"lo é"}\n\n' +
  'event: done\ndata: {"model_id":"m1","model":"gemma-3-270m","device":"cpu","prompt_tokens":3,"completion_tokens":2,"finish_reason":"length","ttft_ms":12,"latency_ms":30,"tokens_per_second":55.5}\n\n';

function all(chunks: string[]) {
  const p = new SseParser();
  return chunks.flatMap((c) => p.push(c));
}

describe('SseParser', () => {
  it('parses the router stream in one chunk', () => {
    const evs = all([ROUTER_STREAM]);
    expect(evs.map((e) => e.event)).toEqual(['route', 'token', 'token', 'done']);
    expect(JSON.parse(evs[2].data).text).toBe('lo é');
  });

  it('gives the same events for every split of the stream, one character at a time too', () => {
    const whole = all([ROUTER_STREAM]);
    expect(all(ROUTER_STREAM.split(''))).toEqual(whole);
    for (let i = 1; i < ROUTER_STREAM.length; i += 7) {
      expect(all([ROUTER_STREAM.slice(0, i), ROUTER_STREAM.slice(i)])).toEqual(whole);
    }
  });

  it('handles CRLF and CR line ends, including a CRLF split across chunks', () => {
    expect(all(['event: a\r\ndata: 1\r\n\r\n'])).toEqual([{ event: 'a', data: '1' }]);
    expect(all(['event: a\rdata: 1\r\r'])).toEqual([{ event: 'a', data: '1' }]);
    expect(all(['event: a\r', '\ndata: 1\r', '\n\r', '\n'])).toEqual([{ event: 'a', data: '1' }]);
  });

  it('joins multi-line data, ignores comments and unknown fields, defaults the event name', () => {
    expect(all([': keep-alive\n\ndata: a\ndata:b\nretry: 10\nfoo: bar\n\n'])).toEqual([{ event: 'message', data: 'a\nb' }]);
  });

  it('keeps only one leading space of a value and records ids', () => {
    expect(all(['id: 7\nevent:x\ndata:  two\n\n'])).toEqual([{ event: 'x', data: ' two', id: '7' }]);
  });

  it('skips blocks without data and drops an unterminated last event', () => {
    const p = new SseParser();
    expect(p.push('event: ping\n\n')).toEqual([]);
    expect(p.push('event: token\ndata: {"text":"x"}')).toEqual([]);
    expect(p.end()).toEqual([]);
  });
});

describe('readSse', () => {
  it('decodes UTF-8 split across byte chunks', async () => {
    const bytes = new TextEncoder().encode('event: token\ndata: {"text":"héllo ✓"}\n\n');
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (const b of bytes) c.enqueue(new Uint8Array([b]));
        c.close();
      },
    });
    const got: string[] = [];
    await readSse(body, (e) => got.push(JSON.parse(e.data).text));
    expect(got).toEqual(['héllo ✓']);
  });
});
