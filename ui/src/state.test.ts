import { describe, expect, it } from 'vitest';
import type { BackendView, DoneEvent, RouteEvent } from './api';
import {
  backendAvailability,
  busy,
  cacheLabel,
  current,
  errorText,
  formProblem,
  initialState,
  paramsFromForm,
  reasonTags,
  reducer,
  rerunAvailability,
  rerunParams,
  sortedProbabilities,
  topContributions,
  type Action,
  type State,
} from './state';

const route: RouteEvent = {
  request_id: 'r1',
  model: 'gemma-3-270m',
  backend: 'm1',
  device: 'cpu',
  confidence: 0.82,
  probabilities: { 'gemma-3-270m': 0.82, 'qwen2.5-coder-1.5b-instruct': 0.18 },
  reason: 'baseline: smallest healthy model (gemma-3-270m, 270M params)',
  cache: 'miss',
};
const done: DoneEvent = {
  model_id: 'm1', model: 'gemma-3-270m', device: 'cpu', prompt_tokens: 4, completion_tokens: 2, finish_reason: 'length',
  ttft_ms: 40, latency_ms: 90, tokens_per_second: 20, request_id: 'r1', cache: 'miss', routing_ms: 0.1, cache_ms: 0.2, total_ms: 95,
};
const cpu: BackendView = { id: 'm1', url: 'http://h:1', model: 'gemma-3-270m', device: 'cpu', slot: 'cpu', healthy: true, in_flight: 0 };
const gpuDown: BackendView = { id: 'm4', url: 'http://h:4', model: 'qwen', device: 'gpu', slot: 'gpu', healthy: false, in_flight: 0 };
const gpuUp: BackendView = { ...gpuDown, device: 'cuda', healthy: true };

function play(actions: Action[], s: State = initialState): State {
  return actions.reduce(reducer, s);
}

const form = { prompt: 'def f(x):', prefer: 'cpu' as const, maxTokens: 8, temp: 0 };

describe('page state', () => {
  it('streams an answer: start, route, tokens, done', () => {
    let s = play([{ type: 'form', patch: form }, { type: 'backends', backends: [cpu] }]);
    s = play([{ type: 'start', params: paramsFromForm(s.form), origin: 'submit' }], s);
    expect(busy(s)).toBe(true);
    expect(current(s)!.params).toEqual({ prompt: 'def f(x):', max_tokens: 8, temp: 0, prefer_backend: 'cpu' });
    s = play([{ type: 'route', id: 1, route }, { type: 'token', id: 1, text: ' return' }, { type: 'token', id: 1, text: ' x' }], s);
    expect(current(s)!.text).toBe(' return x');
    expect(current(s)!.tokens).toBe(2);
    s = play([{ type: 'done', id: 1, done }], s);
    expect(current(s)!.status).toBe('done');
    expect(busy(s)).toBe(false);
    // late tokens after done are ignored
    s = play([{ type: 'token', id: 1, text: 'late' }], s);
    expect(current(s)!.text).toBe(' return x');
  });

  it('re-runs the same prompt on the other kind of backend, keeping the first answer to compare', () => {
    let s = play([
      { type: 'form', patch: form },
      { type: 'backends', backends: [cpu, gpuUp] },
      { type: 'start', params: paramsFromForm(form), origin: 'submit' },
      { type: 'route', id: 1, route },
      { type: 'done', id: 1, done },
      { type: 'form', patch: { prompt: 'edited but not submitted' } },
    ]);
    expect(rerunAvailability(s, 'gpu')).toEqual({ enabled: true });
    const p = rerunParams(s, 'gpu')!;
    expect(p).toEqual({ prompt: 'def f(x):', max_tokens: 8, temp: 0, prefer_backend: 'gpu' });
    s = play([{ type: 'start', params: p, origin: 'rerun' }], s);
    expect(s.runs.map((r) => r.id)).toEqual([1, 2]);
    expect(rerunAvailability(s, 'cpu')).toEqual({ enabled: false, reason: 'an answer is still streaming' });
    // a new submit starts a new comparison
    s = play([{ type: 'done', id: 2, done }, { type: 'start', params: paramsFromForm(s.form), origin: 'submit' }], s);
    expect(s.runs.map((r) => r.id)).toEqual([3]);
  });

  it('disables re-run on GPU with a reason when no healthy GPU backend exists', () => {
    const s = play([
      { type: 'start', params: paramsFromForm(form), origin: 'submit' },
      { type: 'done', id: 1, done },
    ]);
    expect(rerunAvailability(s, 'gpu')).toEqual({ enabled: false, reason: 'the backend list has not loaded yet' });
    expect(rerunAvailability(reducer(s, { type: 'backends', backends: [cpu] }), 'gpu')).toEqual({ enabled: false, reason: 'no GPU backend in this mesh' });
    expect(rerunAvailability(reducer(s, { type: 'backends', backends: [cpu, gpuDown] }), 'gpu')).toEqual({ enabled: false, reason: 'no healthy GPU backend (m4 down)' });
    expect(rerunAvailability(reducer(s, { type: 'backends', backends: [cpu] }), 'cpu')).toEqual({ enabled: true });
    expect(rerunAvailability(initialState, 'cpu').enabled).toBe(false);
  });

  it('a gpu-slot backend running on the CPU counts as CPU', () => {
    const onCpu: BackendView = { ...gpuUp, device: 'cpu' };
    expect(backendAvailability([onCpu], 'gpu').enabled).toBe(false);
    expect(backendAvailability([onCpu], 'cpu').enabled).toBe(true);
  });

  it('records a fallback re-route before the first token', () => {
    const s = play([
      { type: 'start', params: paramsFromForm(form), origin: 'submit' },
      { type: 'route', id: 1, route: { ...route, backend: 'm2' } },
      { type: 'route', id: 1, route },
    ]);
    expect(current(s)!.route!.backend).toBe('m1');
    expect(current(s)!.reroutes.map((r) => r.backend)).toEqual(['m2']);
  });

  it('stop keeps the partial answer; errors end the run; 429 sets a retry time', () => {
    let s = play([
      { type: 'start', params: paramsFromForm(form), origin: 'submit' },
      { type: 'token', id: 1, text: 'par' },
      { type: 'stop', id: 1 },
      { type: 'token', id: 1, text: 'tial' },
    ]);
    expect(current(s)).toMatchObject({ status: 'stopped', text: 'par' });
    s = play([
      { type: 'start', params: paramsFromForm(form), origin: 'submit' },
      { type: 'error', id: 2, error: { kind: 'rate_limited', message: 'rate limit exceeded', status: 429, retryAfter: 3 }, now: 1000 },
    ], s);
    expect(current(s)!.status).toBe('error');
    expect(s.retryAt).toBe(4000);
    expect(errorText(current(s)!.error!, 2000, s.retryAt)).toBe('Rate limited: too many requests. Retry in 2 s.');
    expect(errorText(current(s)!.error!, 5000, s.retryAt)).toBe('Rate limited: you can retry now.');
    s = play([{ type: 'start', params: paramsFromForm(form), origin: 'submit' }], s);
    expect(s.retryAt).toBeUndefined();
  });

  it('matches /last_request_stats to its run by request id only', () => {
    let s = play([
      { type: 'start', params: paramsFromForm(form), origin: 'submit' },
      { type: 'route', id: 1, route },
      { type: 'done', id: 1, done },
    ]);
    const stats = { request_id: 'other', status: '200', cache: 'miss', latency_ms: 99, tokens: 2 };
    s = reducer(s, { type: 'lastStats', id: 1, stats });
    expect(current(s)!.lastStats).toBeUndefined();
    s = reducer(s, { type: 'lastStats', id: 1, stats: { ...stats, request_id: 'r1' } });
    expect(current(s)!.lastStats!.latency_ms).toBe(99);
    expect(reducer(s, { type: 'lastStats', id: 1, stats: null })).toBe(s);
  });

  it('error texts name the kind of failure', () => {
    expect(errorText({ kind: 'backend', message: 'no healthy backend' })).toBe('Backend failure: no healthy backend');
    expect(errorText({ kind: 'network', message: 'x' })).toMatch(/^Network error/);
    expect(errorText({ kind: 'rate_limited', message: 'x', retryAfter: 5 })).toBe('Rate limited: too many requests. Retry in 5 s.');
  });

  it('validates the form', () => {
    expect(formProblem({ ...form, prompt: '  ' })).toBe('type a prompt first');
    expect(formProblem({ ...form, maxTokens: 0 })).toMatch(/max tokens/);
    expect(formProblem({ ...form, maxTokens: NaN })).toMatch(/max tokens/);
    expect(formProblem({ ...form, temp: 3 })).toMatch(/temperature/);
    expect(formProblem(form)).toBeUndefined();
  });
});

describe('rationale', () => {
  it('sorts probabilities and tags the reason', () => {
    expect(sortedProbabilities({ ...route, probabilities: { a: 0.1, b: 0.7, c: 0.2 } }).map(([m]) => m)).toEqual(['b', 'c', 'a']);
    expect(reasonTags({ ...route, reason: 'no healthy GPU backend, fell back to CPU; baseline: ...' })).toEqual(['no GPU available', 'fallback']);
    // The reason exactly as router/src/learned.rs words it.
    const low = 'low_confidence: best guess gemma-3-270m at p=0.41 is below the threshold 0.72, so the largest model answers';
    expect(reasonTags({ ...route, reason: low, cache: 'hit' })).toEqual(['low-confidence fallback', 'cache hit']);
    expect(reasonTags({ ...route, cache: 'semantic', similarity: 0.934 })).toContain('semantic hit (similarity 0.93)');
    expect(cacheLabel('semantic', { ...route, cache: 'semantic', similarity: 0.9 })).toBe('semantic hit (similarity 0.90)');
    expect(cacheLabel('hit', route)).toBe('hit');
    expect(cacheLabel(undefined, route)).toBe('miss');
    expect(reasonTags(route)).toEqual([]);
  });

  it('reads feature contributions as a map or a list, largest magnitude first', () => {
    expect(topContributions(route)).toEqual([]);
    const m = topContributions({ ...route, features: { chars: 120, has_code: 1 }, contributions: { chars: 0.1, has_code: -0.5, words: 0.02 } }, 2);
    expect(m).toEqual([
      { name: 'has_code', contribution: -0.5, value: 1 },
      { name: 'chars', contribution: 0.1, value: 120 },
    ]);
    const l = topContributions({ ...route, top_contributions: [{ feature: 'lines', contribution: 0.3 }, { name: 'x', contribution: 'nope' }] });
    expect(l).toEqual([{ name: 'lines', contribution: 0.3, value: undefined }]);
  });
});
