// The router's HTTP API as the page uses it: POST /generate (SSE), GET /backends,
// GET /last_request_stats. Shapes follow common/src/route.rs, common/src/wire.rs and
// router/src/backends.rs.
import { readSse } from './sse';

export type Prefer = 'cpu' | 'gpu' | 'auto';

export interface GenerateParams {
  prompt: string;
  max_tokens: number;
  temp: number;
  prefer_backend: Prefer;
  model?: string;
}

/** One feature's part in the routing decision (learned routing). */
export interface Contribution {
  name: string;
  contribution: number;
  value?: number;
}

/** `event: route`. `features`/`contributions` appear once the learned policy ships. */
export interface RouteEvent {
  request_id: string;
  model: string;
  backend: string;
  device: string;
  confidence: number;
  probabilities: Record<string, number>;
  reason: string;
  /** `hit`, `semantic` (a close paraphrase's answer) or `miss`. */
  cache: string;
  /** With a semantic hit: how similar the prompt is to the one that was answered. */
  similarity?: number | null;
  features?: Record<string, number> | null;
  contributions?: Record<string, number> | Contribution[] | null;
  [extra: string]: unknown;
}

/** `event: done`. */
export interface DoneEvent {
  model_id: string;
  model: string;
  device: string;
  prompt_tokens: number;
  completion_tokens: number;
  finish_reason: string;
  ttft_ms: number;
  latency_ms: number;
  tokens_per_second: number;
  request_id?: string;
  cache?: string;
  routing_ms?: number;
  cache_ms?: number;
  total_ms?: number;
}

/** One row of `GET /backends`. */
export interface BackendView {
  id: string;
  url: string;
  model: string;
  device: string;
  slot?: string;
  healthy: boolean;
  chat?: boolean | null;
  in_flight: number;
  ttft_ms?: number | null;
  latency_ms?: number | null;
  last_error?: string | null;
}

/** `GET /last_request_stats`. */
export interface LastRequestStats {
  request_id: string;
  time?: string;
  status: string;
  cache: string;
  latency_ms: number;
  tokens: number;
  route?: RouteEvent | null;
  stats?: DoneEvent | null;
  error?: { message: string; type: string } | null;
}

export type ErrorKind = 'rate_limited' | 'auth' | 'backend' | 'network' | 'invalid' | 'server';

export interface ApiError {
  kind: ErrorKind;
  message: string;
  /** HTTP status, when the router answered. */
  status?: number;
  /** The router's error type (`backend_unavailable`, `rate_limit_exceeded`, ...). */
  type?: string;
  /** Seconds from Retry-After on a 429 (or 503). */
  retryAfter?: number;
}

export interface StreamHandlers {
  onRoute(r: RouteEvent): void;
  onToken(text: string): void;
  onDone(d: DoneEvent): void;
  onError(e: ApiError): void;
}

/** Retry-After as seconds: delta-seconds or an HTTP date. */
export function parseRetryAfter(v: string | null, now = Date.now()): number | undefined {
  if (!v) return undefined;
  const s = v.trim();
  if (/^\d+$/.test(s)) return parseInt(s, 10);
  const t = Date.parse(s);
  if (Number.isNaN(t)) return undefined;
  return Math.max(0, Math.ceil((t - now) / 1000));
}

let apiKey = '';

/** The API key sent with every model request (a router started with `--api-keys` needs one). */
export function setApiKey(key: string): void {
  apiKey = key.trim();
}

/** `Authorization: Bearer <key>` when a key is set. */
export function authHeaders(): Record<string, string> {
  return apiKey ? { authorization: `Bearer ${apiKey}` } : {};
}

/** Turns the router's error type and HTTP status into the page's kinds of error. */
export function classify(status: number | undefined, type: string | undefined): ErrorKind {
  if (status === 429 || type === 'rate_limit_exceeded') return 'rate_limited';
  if (status === 401 || type === 'missing_api_key' || type === 'invalid_api_key') return 'auth';
  if (type === 'backend_unavailable' || type === 'backend_error' || status === 502 || status === 503 || status === 504)
    return 'backend';
  if (status !== undefined && status >= 400 && status < 500) return 'invalid';
  if (type === 'internal_error' || (status !== undefined && status >= 500)) return 'server';
  return 'backend';
}

async function errorFromResponse(resp: Response): Promise<ApiError> {
  let message = `${resp.status} ${resp.statusText}`.trim();
  let type: string | undefined;
  try {
    const body = await resp.json();
    if (body?.error?.message) message = body.error.message;
    if (body?.error?.type) type = body.error.type;
  } catch {
    /* not JSON */
  }
  return {
    kind: classify(resp.status, type),
    message,
    status: resp.status,
    type,
    retryAfter: parseRetryAfter(resp.headers.get('retry-after')),
  };
}

/**
 * Streams one answer. Resolves when the stream has ended, one way or another; every outcome is
 * reported through `h` (an abort through the signal reports nothing).
 */
export async function streamGenerate(
  params: GenerateParams,
  h: StreamHandlers,
  signal?: AbortSignal,
  fetchFn: typeof fetch = fetch,
): Promise<void> {
  let resp: Response;
  try {
    resp = await fetchFn('/generate', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...authHeaders() },
      body: JSON.stringify({ ...params, stream: true }),
      signal,
    });
  } catch (e) {
    if (signal?.aborted) return;
    h.onError({ kind: 'network', message: `could not reach the router (${(e as Error).message})` });
    return;
  }
  if (!resp.ok || !resp.body) {
    h.onError(await errorFromResponse(resp));
    return;
  }
  let finished = false;
  try {
    await readSse(resp.body, (ev) => {
      if (finished) return;
      let data: any;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return; // not ours
      }
      switch (ev.event) {
        case 'route':
          h.onRoute(data as RouteEvent);
          break;
        case 'token':
          h.onToken(String(data?.text ?? ''));
          break;
        case 'done':
          finished = true;
          h.onDone(data as DoneEvent);
          break;
        case 'error': {
          finished = true;
          const type = data?.error?.type;
          h.onError({ kind: classify(undefined, type), message: data?.error?.message ?? 'the stream failed', type });
          break;
        }
      }
    });
  } catch (e) {
    if (signal?.aborted) return;
    if (!finished) {
      finished = true;
      h.onError({ kind: 'network', message: `the connection broke mid-answer (${(e as Error).message})` });
    }
    return;
  }
  if (!finished && !signal?.aborted) {
    h.onError({ kind: 'network', message: 'the connection closed before the answer finished' });
  }
}

export async function fetchBackends(fetchFn: typeof fetch = fetch): Promise<BackendView[]> {
  const r = await fetchFn('/backends', { headers: { accept: 'application/json' } });
  if (!r.ok) throw new Error(`/backends answered ${r.status}`);
  const body = await r.json();
  return Array.isArray(body) ? body : (body.backends ?? []);
}

export async function fetchLastStats(fetchFn: typeof fetch = fetch): Promise<LastRequestStats | null> {
  const r = await fetchFn('/last_request_stats', { headers: { accept: 'application/json', ...authHeaders() } });
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(`/last_request_stats answered ${r.status}`);
  return r.json();
}
