import { describe, expect, it, vi } from 'vitest';
import { authHeaders, classify, parseRetryAfter, setApiKey, streamGenerate, type ApiError, type DoneEvent, type RouteEvent } from './api';

function sse(chunks: string[], opts: { error?: Error } = {}): Response {
  const enc = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (const ch of chunks) c.enqueue(enc.encode(ch));
      if (opts.error) c.error(opts.error);
      else c.close();
    },
  });
  return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
}

function collect() {
  const log: { routes: RouteEvent[]; tokens: string[]; done?: DoneEvent; errors: ApiError[] } = { routes: [], tokens: [], errors: [] };
  return {
    log,
    h: {
      onRoute: (r: RouteEvent) => log.routes.push(r),
      onToken: (t: string) => log.tokens.push(t),
      onDone: (d: DoneEvent) => (log.done = d),
      onError: (e: ApiError) => log.errors.push(e),
    },
  };
}

const params = { prompt: 'hi', max_tokens: 8, temp: 0, prefer_backend: 'cpu' as const };

describe('streamGenerate', () => {
  it('posts the body and relays route, tokens and done', async () => {
    const f = vi.fn(async (_url: string | URL | Request, _init?: RequestInit) =>
      sse(['event: route\ndata: {"model":"g","confidence":0.9}\n\nevent: tok', 'en\ndata: {"text":"a"}\n\nevent: token\ndata: {"text":"b"}\n\n', 'event: done\ndata: {"model":"g","ttft_ms":1}\n\n']),
    );
    const { log, h } = collect();
    await streamGenerate(params, h, undefined, f as unknown as typeof fetch);
    expect(f).toHaveBeenCalledOnce();
    const [url, init] = f.mock.calls[0];
    expect(url).toBe('/generate');
    expect(JSON.parse(String(init!.body))).toEqual({ ...params, stream: true });
    expect(log.routes[0].model).toBe('g');
    expect(log.tokens).toEqual(['a', 'b']);
    expect(log.done?.ttft_ms).toBe(1);
    expect(log.errors).toEqual([]);
  });

  it('reports a 429 with its Retry-After', async () => {
    const f = async () =>
      new Response(JSON.stringify({ error: { message: 'rate limit exceeded', type: 'rate_limit_exceeded' } }), {
        status: 429,
        headers: { 'retry-after': '7', 'content-type': 'application/json' },
      });
    const { log, h } = collect();
    await streamGenerate(params, h, undefined, f as unknown as typeof fetch);
    expect(log.errors).toEqual([{ kind: 'rate_limited', message: 'rate limit exceeded', status: 429, type: 'rate_limit_exceeded', retryAfter: 7 }]);
  });

  it('reports a 503 with no backend as a backend failure', async () => {
    const f = async () => new Response(JSON.stringify({ error: { message: 'no healthy backend', type: 'backend_unavailable' } }), { status: 503 });
    const { log, h } = collect();
    await streamGenerate(params, h, undefined, f as unknown as typeof fetch);
    expect(log.errors[0].kind).toBe('backend');
    expect(log.errors[0].message).toBe('no healthy backend');
  });

  it('reports an error event after tokens, and a network failure', async () => {
    let { log, h } = collect();
    await streamGenerate(params, h, undefined, (async () =>
      sse(['event: token\ndata: {"text":"a"}\n\nevent: error\ndata: {"error":{"message":"backend died","type":"backend_error"}}\n\n'])) as unknown as typeof fetch);
    expect(log.tokens).toEqual(['a']);
    expect(log.errors[0]).toMatchObject({ kind: 'backend', message: 'backend died' });

    ({ log, h } = collect());
    await streamGenerate(params, h, undefined, (async () => {
      throw new TypeError('Failed to fetch');
    }) as unknown as typeof fetch);
    expect(log.errors[0].kind).toBe('network');
  });

  it('reports a stream that ends or breaks before done', async () => {
    let { log, h } = collect();
    await streamGenerate(params, h, undefined, (async () => sse(['event: token\ndata: {"text":"a"}\n\n'])) as unknown as typeof fetch);
    expect(log.errors[0]).toMatchObject({ kind: 'network', message: 'the connection closed before the answer finished' });

    ({ log, h } = collect());
    await streamGenerate(params, h, undefined, (async () => sse(['event: token\ndata: {"text":"a"}\n\n'], { error: new Error('reset') })) as unknown as typeof fetch);
    expect(log.errors[0].kind).toBe('network');
  });

  it('reports nothing when aborted', async () => {
    const ctrl = new AbortController();
    const f = async (_u: unknown, init?: RequestInit) =>
      new Promise<Response>((_res, rej) => init!.signal!.addEventListener('abort', () => rej(new DOMException('aborted', 'AbortError'))));
    const { log, h } = collect();
    const p = streamGenerate(params, h, ctrl.signal, f as unknown as typeof fetch);
    ctrl.abort();
    await p;
    expect(log.errors).toEqual([]);
  });
});

describe('helpers', () => {
  it('parses Retry-After seconds and dates', () => {
    expect(parseRetryAfter('3')).toBe(3);
    expect(parseRetryAfter(null)).toBeUndefined();
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 0)).toBe(10);
    expect(parseRetryAfter('soon')).toBeUndefined();
  });

  it('classifies errors', () => {
    expect(classify(429, undefined)).toBe('rate_limited');
    expect(classify(401, 'missing_api_key')).toBe('auth');
    expect(classify(401, undefined)).toBe('auth');
    expect(classify(503, 'backend_unavailable')).toBe('backend');
    expect(classify(400, 'invalid_request_error')).toBe('invalid');
    expect(classify(500, 'internal_error')).toBe('server');
    expect(classify(undefined, 'backend_error')).toBe('backend');
  });
});

describe('API key', () => {
  it('is sent as a bearer token only when set', async () => {
    setApiKey('');
    expect(authHeaders()).toEqual({});
    setApiKey('  k-123 ');
    expect(authHeaders()).toEqual({ authorization: 'Bearer k-123' });
    let sent: Record<string, string> = {};
    const f = async (_url: string, init: RequestInit) => {
      sent = init.headers as Record<string, string>;
      return new Response(JSON.stringify({ error: { type: 'invalid_api_key', message: 'the API key is not accepted' } }), {
        status: 401,
        headers: { 'content-type': 'application/json' },
      });
    };
    const errors: ApiError[] = [];
    await streamGenerate(
      { prompt: 'hi', max_tokens: 4, temp: 0, prefer_backend: 'auto' },
      { onRoute: () => {}, onToken: () => {}, onDone: () => {}, onError: (e) => errors.push(e) },
      undefined,
      f as unknown as typeof fetch,
    );
    expect(sent.authorization).toBe('Bearer k-123');
    expect(errors.map((e) => e.kind)).toEqual(['auth']);
    setApiKey('');
  });
});
