import { useCallback, useEffect, useReducer, useRef, useState } from 'react';
import { fetchBackends, fetchLastStats, setApiKey, streamGenerate, type BackendView, type GenerateParams, type Prefer } from './api';
import {
  backendAvailability,
  busy,
  cacheLabel,
  current,
  deviceKind,
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
  type Run,
} from './state';

const BACKENDS_POLL_MS = 3000;
const API_KEY_STORAGE = 'polyllm.apiKey';

function storedApiKey(): string {
  try {
    return window.localStorage.getItem(API_KEY_STORAGE) ?? '';
  } catch {
    return '';
  }
}

function fmt(v: number | null | undefined, digits = 0, unit = ''): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return `${v.toFixed(digits)}${unit}`;
}

function useNow(active: boolean): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!active) return;
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, [active]);
  return now;
}

export function App() {
  const [s, dispatch] = useReducer(reducer, initialState);
  const [apiKey, setApiKeyState] = useState(storedApiKey);
  useEffect(() => {
    setApiKey(apiKey);
    try {
      if (apiKey) window.localStorage.setItem(API_KEY_STORAGE, apiKey);
      else window.localStorage.removeItem(API_KEY_STORAGE);
    } catch {
      /* storage unavailable: the key lives for this page only */
    }
  }, [apiKey]);
  const abort = useRef<AbortController | null>(null);
  const now = useNow(s.retryAt !== undefined);
  const rateLimited = s.retryAt !== undefined && now < s.retryAt;
  const streaming = busy(s);

  const refreshBackends = useCallback(async () => {
    try {
      dispatch({ type: 'backends', backends: await fetchBackends() });
    } catch (e) {
      dispatch({ type: 'backendsError', message: (e as Error).message });
    }
  }, []);

  useEffect(() => {
    refreshBackends();
    const t = setInterval(refreshBackends, BACKENDS_POLL_MS);
    return () => clearInterval(t);
  }, [refreshBackends]);

  const run = useCallback(
    async (params: GenerateParams, origin: 'submit' | 'rerun', id: number) => {
      abort.current?.abort();
      const ctrl = new AbortController();
      abort.current = ctrl;
      dispatch({ type: 'start', params, origin });
      let ok = false;
      await streamGenerate(
        params,
        {
          onRoute: (route) => dispatch({ type: 'route', id, route }),
          onToken: (text) => dispatch({ type: 'token', id, text }),
          onDone: (done) => {
            ok = true;
            dispatch({ type: 'done', id, done });
          },
          onError: (error) => dispatch({ type: 'error', id, error }),
        },
        ctrl.signal,
      );
      if (abort.current === ctrl) abort.current = null;
      if (ok) {
        try {
          dispatch({ type: 'lastStats', id, stats: await fetchLastStats() });
        } catch {
          /* the snapshot is optional */
        }
      }
      refreshBackends();
    },
    [refreshBackends],
  );

  const problem = formProblem(s.form);
  const submit = () => {
    if (problem || streaming || rateLimited) return;
    run(paramsFromForm(s.form), 'submit', s.nextId);
  };
  const stop = () => {
    const r = current(s);
    abort.current?.abort();
    abort.current = null;
    if (r) dispatch({ type: 'stop', id: r.id });
  };
  const rerun = (kind: 'cpu' | 'gpu') => {
    const p = rerunParams(s, kind);
    if (p && rerunAvailability(s, kind).enabled && !rateLimited) run(p, 'rerun', s.nextId);
  };

  const last = current(s);
  const errorRun = last?.status === 'error' ? last : undefined;

  return (
    <div className="page">
      <header>
        <h1>polyllm</h1>
        <p className="sub">One prompt, routed across the mesh: see who answered, why, and how fast.</p>
      </header>
      <main>
        <section className="card" aria-labelledby="prompt-h">
          <h2 id="prompt-h">Ask the mesh</h2>
          <form
            onSubmit={(e) => {
              e.preventDefault();
              submit();
            }}
          >
            <label htmlFor="prompt">Prompt</label>
            <textarea
              id="prompt"
              rows={4}
              value={s.form.prompt}
              placeholder="def fibonacci(n):"
              onChange={(e) => dispatch({ type: 'form', patch: { prompt: e.target.value } })}
              onKeyDown={(e) => {
                if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
                  e.preventDefault();
                  submit();
                } else if (e.key === 'Escape' && streaming) {
                  stop();
                }
              }}
              aria-describedby="prompt-help"
            />
            <p id="prompt-help" className="help">
              Ctrl+Enter submits, Esc stops.
            </p>
            <div className="controls">
              <fieldset className="segmented">
                <legend>Prefer backend</legend>
                {(['cpu', 'gpu', 'auto'] as Prefer[]).map((p) => (
                  <label key={p} className={s.form.prefer === p ? 'on' : ''}>
                    <input
                      type="radio"
                      name="prefer"
                      value={p}
                      checked={s.form.prefer === p}
                      onChange={() => dispatch({ type: 'form', patch: { prefer: p } })}
                    />
                    {p.toUpperCase()}
                  </label>
                ))}
              </fieldset>
              <div className="field">
                <label htmlFor="max-tokens">Max tokens</label>
                <input
                  id="max-tokens"
                  type="number"
                  min={1}
                  max={4096}
                  step={1}
                  value={Number.isNaN(s.form.maxTokens) ? '' : s.form.maxTokens}
                  onChange={(e) => dispatch({ type: 'form', patch: { maxTokens: e.target.valueAsNumber } })}
                />
              </div>
              <div className="field">
                <label htmlFor="temp">
                  Temperature <output htmlFor="temp">{fmt(s.form.temp, 2)}</output>
                </label>
                <input
                  id="temp"
                  type="range"
                  min={0}
                  max={2}
                  step={0.05}
                  value={s.form.temp}
                  onChange={(e) => dispatch({ type: 'form', patch: { temp: e.target.valueAsNumber } })}
                />
              </div>
              <div className="field">
                <label htmlFor="api-key">API key</label>
                <input
                  id="api-key"
                  type="password"
                  autoComplete="off"
                  placeholder="only if the router needs one"
                  value={apiKey}
                  onChange={(e) => setApiKeyState(e.target.value)}
                />
              </div>
            </div>
            <div className="actions">
              <button type="submit" className="primary" disabled={!!problem || streaming || rateLimited}>
                Submit
              </button>
              <button type="button" onClick={stop} disabled={!streaming}>
                Stop
              </button>
              {problem && s.form.prompt !== '' && <span className="help">{problem}</span>}
            </div>
          </form>
        </section>

        {errorRun?.error && (
          <div className={`alert ${errorRun.error.kind}`} role="alert">
            {errorText(errorRun.error, now, errorRun.error.kind === 'rate_limited' ? s.retryAt : undefined)}
          </div>
        )}

        {last && (
          <section className="card" aria-labelledby="answers-h">
            <h2 id="answers-h">{s.runs.length > 1 ? 'Answers compared' : 'Answer'}</h2>
            <div className="runs">
              {s.runs.map((r) => (
                <RunCard key={r.id} run={r} />
              ))}
            </div>
            <RerunButtons
              gpu={rerunAvailability(s, 'gpu')}
              cpu={rerunAvailability(s, 'cpu')}
              rateLimited={rateLimited}
              onRerun={rerun}
            />
            {s.runs.filter((r) => r.done).length > 1 && <Comparison runs={s.runs} />}
          </section>
        )}

        <BackendsPanel backends={s.backends} error={s.backendsError} />
        <BenchPanel backends={s.backends} runs={s.runs} />
      </main>
    </div>
  );
}

function RerunButtons(props: {
  gpu: { enabled: boolean; reason?: string };
  cpu: { enabled: boolean; reason?: string };
  rateLimited: boolean;
  onRerun: (k: 'cpu' | 'gpu') => void;
}) {
  return (
    <div className="rerun">
      {(['gpu', 'cpu'] as const).map((k) => {
        const a = props[k];
        const id = `rerun-${k}-why`;
        const disabled = !a.enabled || props.rateLimited;
        return (
          <div key={k} className="rerun-one">
            <button type="button" disabled={disabled} onClick={() => props.onRerun(k)} aria-describedby={disabled ? id : undefined}>
              Re-run on {k.toUpperCase()}
            </button>
            {disabled && (
              <span id={id} className="help why" data-testid={`rerun-${k}-reason`}>
                {a.enabled ? 'rate limited, wait' : a.reason}
              </span>
            )}
          </div>
        );
      })}
    </div>
  );
}

function Bar(props: { label: string; value: number; max: number; text: string; highlight?: boolean }) {
  const w = props.max > 0 ? Math.max(0, Math.min(1, props.value / props.max)) * 100 : 0;
  return (
    <div className="bar-row">
      <span className="bar-label" title={props.label}>
        {props.label}
      </span>
      <svg className="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label={`${props.label}: ${props.text}`}>
        <rect x="0" y="0" width="100" height="10" className="bar-bg" />
        <rect x="0" y="0" width={w} height="10" className={props.highlight ? 'bar-fg hi' : 'bar-fg'} />
      </svg>
      <span className="bar-value">{props.text}</span>
    </div>
  );
}

function RunCard({ run }: { run: Run }) {
  const r = run.route;
  const d = run.done;
  const kind = r ? deviceKind(d?.device ?? r.device) : undefined;
  const probs = sortedProbabilities(r);
  const contribs = topContributions(r);
  const maxAbs = Math.max(1e-9, ...contribs.map((c) => Math.abs(c.contribution)));
  const tags = reasonTags(r);
  return (
    <article className={`run ${run.status}`} aria-label={`Answer ${run.id}`} data-testid="run">
      <div className="run-head">
        <span className="who" data-testid="model">
          {r ? (
            <>
              <strong>{d?.model ?? r.model}</strong>@{d?.device ?? r.device}
              <span className="muted"> ({d?.model_id ?? r.backend})</span>
            </>
          ) : (
            <span className="muted">{run.status === 'streaming' ? 'routing…' : 'not routed'}</span>
          )}
        </span>
        {kind && <span className={`chip ${kind}`}>{kind.toUpperCase()}</span>}
        {r && (
          <span className="chip" data-testid="confidence">
            confidence {fmt(r.confidence * 100, 0, '%')}
          </span>
        )}
        <span className="chip status">
          asked {run.params.prefer_backend} ·{' '}
          {run.status === 'streaming' ? 'streaming…' : run.status === 'error' && run.error ? `error (${run.error.kind.replace('_', ' ')})` : run.status}
        </span>
      </div>
      <pre className="answer" aria-live="polite" aria-busy={run.status === 'streaming'} data-testid="answer">
        <span className="prompt-echo">{run.params.prompt}</span>
        <span data-testid="completion">{run.text}</span>
        {run.status === 'streaming' && <span className="cursor" aria-hidden="true" />}
      </pre>

      {r && (
        <details className="why" open>
          <summary>Why this backend</summary>
          <p className="reason" data-testid="reason">
            {r.reason}
            {tags.map((t) => (
              <span key={t} className="chip tag">
                {t}
              </span>
            ))}
          </p>
          {run.reroutes.length > 0 && (
            <p className="help">Moved after a failure from: {run.reroutes.map((x) => `${x.model}@${x.device} (${x.backend})`).join(', ')}</p>
          )}
          {probs.length > 0 && (
            <div className="probs">
              <h3>Class probabilities</h3>
              {probs.map(([m, p]) => (
                <Bar key={m} label={m} value={p} max={1} text={fmt(p * 100, 1, '%')} highlight={m === r.model} />
              ))}
            </div>
          )}
          {contribs.length > 0 && (
            <div className="contribs">
              <h3>Top features</h3>
              {contribs.map((c) => (
                <div className="bar-row" key={c.name}>
                  <span className="bar-label">
                    {c.name}
                    {c.value !== undefined && <span className="muted"> = {fmt(Number(c.value), 2)}</span>}
                  </span>
                  <svg className="bar" viewBox="-50 0 100 10" preserveAspectRatio="none" role="img" aria-label={`${c.name} contributes ${c.contribution.toFixed(3)}`}>
                    <rect x="-50" y="0" width="100" height="10" className="bar-bg" />
                    <rect
                      x={c.contribution < 0 ? (50 * c.contribution) / maxAbs : 0}
                      y="0"
                      width={(50 * Math.abs(c.contribution)) / maxAbs}
                      height="10"
                      className={c.contribution < 0 ? 'bar-fg neg' : 'bar-fg'}
                    />
                    <line x1="0" x2="0" y1="0" y2="10" className="axis" />
                  </svg>
                  <span className="bar-value">{c.contribution >= 0 ? '+' : ''}{c.contribution.toFixed(3)}</span>
                </div>
              ))}
            </div>
          )}
        </details>
      )}

      {d && (
        <dl className="metrics" data-testid="metrics">
          <div><dt>TTFT</dt><dd>{fmt(d.ttft_ms, 0, ' ms')}</dd></div>
          <div><dt>Latency</dt><dd>{fmt(d.latency_ms, 0, ' ms')}</dd></div>
          <div><dt>Tokens/s</dt><dd>{fmt(d.tokens_per_second, 1)}</dd></div>
          <div><dt>Tokens</dt><dd>{d.prompt_tokens} in / {d.completion_tokens} out</dd></div>
          <div><dt>Cache</dt><dd>{cacheLabel(d.cache ?? r?.cache, r)}</dd></div>
          <div><dt>Routing</dt><dd>{fmt(d.routing_ms, 2, ' ms')}</dd></div>
          <div><dt>Router total</dt><dd>{fmt(d.total_ms, 0, ' ms')}</dd></div>
          <div><dt>Finish</dt><dd>{d.finish_reason}</dd></div>
          {run.lastStats && (
            <div><dt>/last_request_stats</dt><dd>{run.lastStats.status} · {fmt(run.lastStats.latency_ms, 0, ' ms')}</dd></div>
          )}
        </dl>
      )}
    </article>
  );
}

function Comparison({ runs }: { runs: Run[] }) {
  const done = runs.filter((r) => r.done);
  return (
    <div className="table-wrap">
      <table className="compare">
        <caption>Side by side</caption>
        <thead>
          <tr><th scope="col">#</th><th scope="col">Model@device</th><th scope="col">TTFT</th><th scope="col">Latency</th><th scope="col">Tokens/s</th><th scope="col">Cache</th></tr>
        </thead>
        <tbody>
          {done.map((r) => (
            <tr key={r.id}>
              <th scope="row">{r.id}</th>
              <td>{r.done!.model}@{r.done!.device}</td>
              <td>{fmt(r.done!.ttft_ms, 0, ' ms')}</td>
              <td>{fmt(r.done!.latency_ms, 0, ' ms')}</td>
              <td>{fmt(r.done!.tokens_per_second, 1)}</td>
              <td>{r.done!.cache ?? r.route?.cache ?? '–'}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function BackendsPanel({ backends, error }: { backends: BackendView[] | null; error?: string }) {
  const gpu = backendAvailability(backends, 'gpu');
  return (
    <section className="card" aria-labelledby="backends-h">
      <h2 id="backends-h">Backends</h2>
      {error && <p className="inline-error" role="status">Cannot list backends: {error}</p>}
      {backends === null && !error && <p className="muted">loading…</p>}
      {backends && (
        <div className="table-wrap">
          <table className="backends">
            <thead>
              <tr><th scope="col">Id</th><th scope="col">Health</th><th scope="col">Device</th><th scope="col">Model</th><th scope="col">In flight</th><th scope="col">Recent TTFT</th><th scope="col">Recent latency</th></tr>
            </thead>
            <tbody>
              {backends.map((b) => (
                <tr key={b.id} className={b.healthy ? '' : 'down'}>
                  <th scope="row">{b.id}</th>
                  <td title={b.healthy ? undefined : (b.last_error ?? undefined)}>
                    <span className={`dot ${b.healthy ? 'up' : 'down'}`} aria-hidden="true" />
                    {b.healthy ? 'healthy' : 'down'}
                  </td>
                  <td>{b.device}{b.slot && b.slot !== deviceKind(b.device) ? <span className="muted"> ({b.slot} slot)</span> : null}</td>
                  <td>{b.model}</td>
                  <td>{b.in_flight}</td>
                  <td>{fmt(b.ttft_ms, 0, ' ms')}</td>
                  <td>{fmt(b.latency_ms, 0, ' ms')}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {backends && !gpu.enabled && <p className="help">GPU: {gpu.reason}.</p>}
    </section>
  );
}

/** Honest, small charts: the router's live per-backend moving averages, and this page's runs. */
function BenchPanel({ backends, runs }: { backends: BackendView[] | null; runs: Run[] }) {
  const live = (backends ?? []).filter((b) => b.ttft_ms != null || b.latency_ms != null);
  const done = runs.filter((r) => r.done);
  const maxLat = Math.max(0, ...live.map((b) => b.latency_ms ?? 0));
  const maxTps = Math.max(0, ...done.map((r) => r.done!.tokens_per_second));
  return (
    <section className="card" aria-labelledby="bench-h">
      <h2 id="bench-h">Benchmarks</h2>
      <div className="bench">
        <div>
          <h3>Recent latency per backend (router's moving average)</h3>
          {live.length === 0 && <p className="muted">no requests measured yet</p>}
          {live.map((b) => (
            <Bar key={b.id} label={`${b.id} ${b.model}@${b.device}`} value={b.latency_ms ?? 0} max={maxLat} text={`${fmt(b.latency_ms, 0, ' ms')} (TTFT ${fmt(b.ttft_ms, 0, ' ms')})`} />
          ))}
        </div>
        <div>
          <h3>Decode speed of this page's answers</h3>
          {done.length === 0 && <p className="muted">no answers yet</p>}
          {done.map((r) => (
            <Bar key={r.id} label={`#${r.id} ${r.done!.model}@${r.done!.device}`} value={r.done!.tokens_per_second} max={maxTps} text={`${fmt(r.done!.tokens_per_second, 1)} tok/s`} />
          ))}
        </div>
      </div>
    </section>
  );
}
