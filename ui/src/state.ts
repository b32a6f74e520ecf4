// The page's state as a pure reducer, so the whole flow (submit, route, tokens, done, error,
// stop, re-run) is unit-testable without a browser.
import type { ApiError, BackendView, Contribution, DoneEvent, GenerateParams, LastRequestStats, Prefer, RouteEvent } from './api';

export type RunStatus = 'streaming' | 'done' | 'error' | 'stopped';

export interface Run {
  id: number;
  params: GenerateParams;
  /** How the run was started: the form, or a re-run on the other kind of backend. */
  origin: 'submit' | 'rerun';
  status: RunStatus;
  text: string;
  tokens: number;
  route?: RouteEvent;
  /** Earlier routes of this run, when a fallback moved it before its first token. */
  reroutes: RouteEvent[];
  done?: DoneEvent;
  error?: ApiError;
  /** The router's /last_request_stats for this run, when it matched. */
  lastStats?: LastRequestStats;
}

export interface Form {
  prompt: string;
  prefer: Prefer;
  maxTokens: number;
  temp: number;
}

export interface State {
  form: Form;
  /** Runs of the current prompt, oldest first: the first answer, then the re-runs to compare. */
  runs: Run[];
  nextId: number;
  backends: BackendView[] | null;
  backendsError?: string;
  /** Epoch ms before which a rate-limited client should not retry. */
  retryAt?: number;
}

export const initialState: State = {
  form: { prompt: '', prefer: 'auto', maxTokens: 64, temp: 0.7 },
  runs: [],
  nextId: 1,
  backends: null,
};

export type Action =
  | { type: 'form'; patch: Partial<Form> }
  | { type: 'start'; params: GenerateParams; origin: 'submit' | 'rerun' }
  | { type: 'route'; id: number; route: RouteEvent }
  | { type: 'token'; id: number; text: string }
  | { type: 'done'; id: number; done: DoneEvent }
  | { type: 'error'; id: number; error: ApiError; now?: number }
  | { type: 'stop'; id: number }
  | { type: 'lastStats'; id: number; stats: LastRequestStats | null }
  | { type: 'backends'; backends: BackendView[] }
  | { type: 'backendsError'; message: string };

function update(s: State, id: number, f: (r: Run) => Run): State {
  return { ...s, runs: s.runs.map((r) => (r.id === id ? f(r) : r)) };
}

export function reducer(s: State, a: Action): State {
  switch (a.type) {
    case 'form':
      return { ...s, form: { ...s.form, ...a.patch } };
    case 'start': {
      const run: Run = { id: s.nextId, params: a.params, origin: a.origin, status: 'streaming', text: '', tokens: 0, reroutes: [] };
      // A new prompt starts a new comparison; a re-run adds to the current one.
      const runs = a.origin === 'submit' ? [run] : [...s.runs, run];
      return { ...s, runs, nextId: s.nextId + 1, retryAt: undefined };
    }
    case 'route':
      return update(s, a.id, (r) => ({ ...r, route: a.route, reroutes: r.route ? [...r.reroutes, r.route] : r.reroutes }));
    case 'token':
      return update(s, a.id, (r) => (r.status === 'streaming' ? { ...r, text: r.text + a.text, tokens: r.tokens + 1 } : r));
    case 'done':
      return update(s, a.id, (r) => (r.status === 'streaming' ? { ...r, status: 'done', done: a.done } : r));
    case 'error': {
      const next = update(s, a.id, (r) => (r.status === 'streaming' ? { ...r, status: 'error', error: a.error } : r));
      if (a.error.kind === 'rate_limited') {
        next.retryAt = (a.now ?? Date.now()) + 1000 * (a.error.retryAfter ?? 1);
      }
      return next;
    }
    case 'stop':
      return update(s, a.id, (r) => (r.status === 'streaming' ? { ...r, status: 'stopped' } : r));
    case 'lastStats': {
      if (!a.stats) return s;
      return update(s, a.id, (r) => {
        const rid = r.done?.request_id ?? r.route?.request_id;
        return rid && a.stats!.request_id === rid ? { ...r, lastStats: a.stats! } : r;
      });
    }
    case 'backends':
      return { ...s, backends: a.backends, backendsError: undefined };
    case 'backendsError':
      return { ...s, backendsError: a.message };
  }
}

// ---------- selectors ----------

export function isGpuDevice(device: string): boolean {
  return ['cuda', 'gpu', 'metal'].includes(device.toLowerCase());
}

/** The kind of backend a device string names. */
export function deviceKind(device: string): 'gpu' | 'cpu' {
  return isGpuDevice(device) ? 'gpu' : 'cpu';
}

export function current(s: State): Run | undefined {
  return s.runs[s.runs.length - 1];
}

export function busy(s: State): boolean {
  return s.runs.some((r) => r.status === 'streaming');
}

export interface Availability {
  enabled: boolean;
  reason?: string;
}

/** Whether a healthy backend of `kind` exists, and if not, why. */
export function backendAvailability(backends: BackendView[] | null, kind: 'cpu' | 'gpu'): Availability {
  const label = kind.toUpperCase();
  if (backends === null) return { enabled: false, reason: 'the backend list has not loaded yet' };
  const ofKind = backends.filter((b) => deviceKind(b.device) === kind || (!b.healthy && b.slot === kind));
  if (ofKind.some((b) => b.healthy && deviceKind(b.device) === kind)) return { enabled: true };
  if (ofKind.length === 0) return { enabled: false, reason: `no ${label} backend in this mesh` };
  return { enabled: false, reason: `no healthy ${label} backend (${ofKind.map((b) => b.id).join(', ')} down)` };
}

/** Whether "Re-run on <kind>" may be pressed now, and if not, why. */
export function rerunAvailability(s: State, kind: 'cpu' | 'gpu'): Availability {
  const last = current(s);
  if (!last) return { enabled: false, reason: 'submit a prompt first' };
  if (busy(s)) return { enabled: false, reason: 'an answer is still streaming' };
  return backendAvailability(s.backends, kind);
}

/** The parameters of a re-run: the last run's prompt and settings on the other kind of backend. */
export function rerunParams(s: State, kind: 'cpu' | 'gpu'): GenerateParams | undefined {
  const last = current(s);
  if (!last) return undefined;
  const { model: _model, ...rest } = last.params;
  return { ...rest, prefer_backend: kind };
}

export function paramsFromForm(f: Form): GenerateParams {
  return { prompt: f.prompt, max_tokens: f.maxTokens, temp: f.temp, prefer_backend: f.prefer };
}

/** Validation of the form; undefined when it may be submitted. */
export function formProblem(f: Form): string | undefined {
  if (!f.prompt.trim()) return 'type a prompt first';
  if (!Number.isInteger(f.maxTokens) || f.maxTokens < 1 || f.maxTokens > 4096) return 'max tokens must be a whole number from 1 to 4096';
  if (!Number.isFinite(f.temp) || f.temp < 0 || f.temp > 2) return 'temperature must be between 0 and 2';
  return undefined;
}

/** The route's feature contributions, largest magnitude first, whatever shape they came in. */
export function topContributions(route: RouteEvent | undefined, n = 5): Contribution[] {
  if (!route) return [];
  const raw =
    route.contributions ??
    (route['top_contributions'] as RouteEvent['contributions']) ??
    (route['feature_contributions'] as RouteEvent['contributions']) ??
    (route['top_features'] as RouteEvent['contributions']);
  if (!raw) return [];
  const features = route.features ?? {};
  let list: Contribution[];
  if (Array.isArray(raw)) {
    list = raw
      .map((c: any) => ({
        name: String(c.name ?? c.feature ?? ''),
        contribution: Number(c.contribution ?? c.value ?? 0),
        value: c.feature_value ?? c.value_of_feature ?? (features as any)[c.name ?? c.feature],
      }))
      .filter((c) => c.name);
  } else {
    list = Object.entries(raw).map(([name, contribution]) => ({ name, contribution: Number(contribution), value: features[name] }));
  }
  return list.filter((c) => Number.isFinite(c.contribution)).sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution)).slice(0, n);
}

/** Probabilities, highest first. */
export function sortedProbabilities(route: RouteEvent | undefined): [string, number][] {
  if (!route) return [];
  return Object.entries(route.probabilities ?? {}).sort((a, b) => b[1] - a[1]);
}

/** Tags for the router's reason: a fallback, low confidence, no GPU... */
export function reasonTags(route: RouteEvent | undefined): string[] {
  if (!route) return [];
  const r = route.reason.toLowerCase();
  const tags: string[] = [];
  if (r.includes('no healthy gpu')) tags.push('no GPU available');
  if (r.includes('no healthy cpu')) tags.push('no CPU available');
  // Routers with the earlier multiclass model said `low_confidence:` when they fell back to the largest model.
  if (r.includes('low_confidence') || r.includes('low confidence') || r.includes('low-confidence')) tags.push('low-confidence fallback');
  else if (r.includes('fell back') || r.includes('fallback')) tags.push('fallback');
  if (route.cache === 'hit') tags.push('cache hit');
  else if (route.cache === 'semantic') tags.push(semanticLabel(route));
  return tags;
}

/** A semantic hit, with its similarity: "semantic hit (similarity 0.93)". */
export function semanticLabel(route: RouteEvent | undefined): string {
  const s = route?.similarity;
  return typeof s === 'number' ? `semantic hit (similarity ${s.toFixed(2)})` : 'semantic hit';
}

/** The Cache cell: hit, a semantic hit with its similarity, or miss. */
export function cacheLabel(cache: string | undefined, route: RouteEvent | undefined): string {
  if (cache === 'hit') return 'hit';
  if (cache === 'semantic') return semanticLabel(route);
  return 'miss';
}

/** The user-facing sentence for an error. */
export function errorText(e: ApiError, now = Date.now(), retryAt?: number): string {
  switch (e.kind) {
    case 'rate_limited': {
      const secs = retryAt !== undefined ? Math.max(0, Math.ceil((retryAt - now) / 1000)) : (e.retryAfter ?? 1);
      return secs > 0 ? `Rate limited: too many requests. Retry in ${secs} s.` : 'Rate limited: you can retry now.';
    }
    case 'auth':
      return `Not authorized: ${e.message}. Enter an API key accepted by this router.`;
    case 'backend':
      return `Backend failure: ${e.message}`;
    case 'network':
      return `Network error: ${e.message}`;
    case 'invalid':
      return `Request rejected: ${e.message}`;
    case 'server':
      return `Router error: ${e.message}`;
  }
}
