#!/usr/bin/env node
// End-to-end test of the page against the real router and a real model service:
// starts `inference` (gemma-3-270m on the CPU) and `router` (serving ui/dist), drives Debian's
// chromium with playwright-core through the flow of the issue, saves screenshots under
// ui/test-results/, and stops everything it started. Exits non-zero on any failure.
//
// Env: CHROMIUM (default /usr/bin/chromium), CARGO_TARGET_DIR (default <repo>/target),
// E2E_MODEL (default <repo>/models/gemma-3-270m-q4_k_m.gguf), E2E_TIMEOUT_MS (per answer, default 180000),
// E2E_NO_BUILD=1 (skip `cargo build -p inference -p router` when both binaries exist).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const uiDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repo = path.resolve(uiDir, '..');
const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(repo, process.env.CARGO_TARGET_DIR) : path.join(repo, 'target');
const bin = (n) => path.join(targetDir, 'debug', n);
const model = process.env.E2E_MODEL ?? path.join(repo, 'models', 'gemma-3-270m-q4_k_m.gguf');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const answerTimeout = Number(process.env.E2E_TIMEOUT_MS ?? 180_000);
const results = path.join(uiDir, 'test-results');
mkdirSync(results, { recursive: true });

const children = [];
const tmpDirs = [];
let browser;

function log(...a) {
  console.log('[e2e]', ...a);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function start(name, cmd, args) {
  const out = createWriteStream(path.join(results, `${name}.log`));
  const child = spawn(cmd, args, { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  child.exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve({ code, sig })));
  child.exited.then(({ code, sig }) => {
    if (!child.stopping) log(`${name} exited early (code ${code}, signal ${sig}); see ui/test-results/${name}.log`);
  });
  children.push({ name, child });
  return child;
}

async function waitFor(what, fn, timeoutMs, child) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${what}: the process exited (code ${child.exitCode})`);
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`timed out waiting for ${what}${last ? ` (${last.message})` : ''}`);
}

async function stopAll() {
  if (browser) await browser.close().catch(() => {});
  for (const { child } of children.reverse()) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    child.stopping = true;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await child.exited;
    clearTimeout(t);
  }
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
}

function check(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
  log(`ok: ${msg}`);
}

async function main() {
  if (!existsSync(path.join(uiDir, 'dist', 'index.html'))) throw new Error('ui/dist is missing: run `npm run build` first');
  if (!existsSync(model)) throw new Error(`model ${model} is missing: run \`cargo run -p polyllm-fetch --bin fetch-models -- --only gemma\``);
  if (!existsSync(chromiumPath)) throw new Error(`${chromiumPath} is missing: apt-get install -y chromium`);
  if (process.env.E2E_NO_BUILD !== '1' || !existsSync(bin('inference')) || !existsSync(bin('router'))) {
    log('cargo build -p inference -p router (set E2E_NO_BUILD=1 to use the binaries as they are)');
    const r = spawnSync('cargo', ['build', '-p', 'inference', '-p', 'router'], { cwd: repo, stdio: 'inherit' });
    if (r.status !== 0) throw new Error('cargo build failed');
  }

  const infPort = await freePort();
  const inf = start('inference', bin('inference'), ['--model', model, '--model-id', 'm1', '--host', '127.0.0.1', '--port', String(infPort)]);
  await waitFor('inference /health 200', async () => (await fetch(`http://127.0.0.1:${infPort}/health`)).status === 200, 300_000, inf);
  log(`inference up on :${infPort}`);

  const routerPort = await freePort();
  const router = start('router', bin('router'), [
    '--host', '127.0.0.1',
    '--port', String(routerPort),
    '--backends', JSON.stringify({ m1: `http://127.0.0.1:${infPort}` }),
    '--ui-dir', path.join(uiDir, 'dist'),
    '--health-interval-ms', '500',
    // Two requests at once, then one per 100 s: the third request of the flow meets a 429.
    '--rate-limit-rps', '0.01',
    '--rate-limit-burst', '2',
  ]);
  const base = `http://127.0.0.1:${routerPort}`;
  await waitFor('router to see m1 healthy', async () => {
    const r = await fetch(`${base}/backends`);
    const b = await r.json();
    return b.backends?.some((x) => x.id === 'm1' && x.healthy);
  }, 60_000, router);
  const index = await (await fetch(`${base}/`)).text();
  check(index.includes('<div id="root">'), 'the router serves ui/dist at /');
  log(`router up on :${routerPort}`);

  const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'polyllm-e2e-chromium-'));
  tmpDirs.push(userDataDir);
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1200, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-sync', '--disable-quic',
    ],
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  await page.goto(base + '/');
  await page.getByRole('heading', { name: 'polyllm' }).waitFor();
  // The backends panel lists m1 as healthy.
  await page.locator('table.backends tbody tr', { hasText: 'm1' }).filter({ hasText: 'healthy' }).waitFor({ timeout: 15_000 });
  check(true, 'backends panel shows m1 healthy');

  // Type a prompt, choose CPU, 8 tokens, submit.
  await page.getByRole('textbox', { name: 'Prompt' }).fill('The capital of France is');
  await page.locator('fieldset.segmented label', { hasText: 'CPU' }).click();
  check(await page.locator('input[name=prefer][value=cpu]').isChecked(), 'CPU is chosen');
  await page.getByLabel('Max tokens').fill('8');

  // Record every text the first answer shows, to see it grow token by token.
  await page.evaluate(() => {
    window.__seen = [];
    const obs = new MutationObserver(() => {
      const el = document.querySelector('[data-testid=run] [data-testid=completion]');
      const t = el?.textContent ?? '';
      if (t && window.__seen[window.__seen.length - 1] !== t) window.__seen.push(t);
    });
    obs.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await page.getByRole('button', { name: 'Submit' }).click();
  const first = page.locator('[data-testid=run]').first();
  await first.locator('[data-testid=metrics]').waitFor({ timeout: answerTimeout });
  const seen = await page.evaluate(() => window.__seen);
  log(`answer texts seen while streaming: ${JSON.stringify(seen)}`);
  check(seen.length >= 2, 'tokens streamed in (the answer grew in at least two steps)');
  const text1 = await first.locator('[data-testid=completion]').textContent();
  check(text1.length > 0, `tokens appeared: ${JSON.stringify(text1)}`);
  const who1 = await first.locator('[data-testid=model]').textContent();
  check(who1.includes('gemma-3-270m') && who1.includes('@cpu'), `model@device shown: ${who1}`);
  const conf = await first.locator('[data-testid=confidence]').textContent();
  check(/confidence \d+(\.\d+)?%/.test(conf), `confidence shown: ${conf}`);
  check((await first.locator('[data-testid=reason]').textContent()).length > 0, 'the router\'s reason is shown');
  const metrics = await first.locator('[data-testid=metrics]').textContent();
  check(/TTFT\d+ ms/.test(metrics) && /Tokens\/s[\d.]+/.test(metrics), `metrics shown: ${metrics}`);

  // No GPU backend: "Re-run on GPU" is disabled and says why.
  const gpuBtn = page.getByRole('button', { name: 'Re-run on GPU' });
  check(await gpuBtn.isDisabled(), 'Re-run on GPU is disabled');
  const why = await page.getByTestId('rerun-gpu-reason').textContent();
  check(/GPU/.test(why), `with a reason: ${why}`);

  // Re-run on CPU gives a second answer next to the first.
  const cpuBtn = page.getByRole('button', { name: 'Re-run on CPU' });
  check(await cpuBtn.isEnabled(), 'Re-run on CPU is enabled');
  await cpuBtn.click();
  const second = page.locator('[data-testid=run]').nth(1);
  await second.locator('[data-testid=metrics]').waitFor({ timeout: answerTimeout });
  const text2 = await second.locator('[data-testid=completion]').textContent();
  check(text2.length > 0, `re-run on CPU produced a second answer: ${JSON.stringify(text2)}`);
  check((await second.locator('[data-testid=model]').textContent()).includes('gemma-3-270m'), 'the second answer names its model');
  await page.locator('table.compare').waitFor();
  check(true, 'the two answers are compared side by side');

  check(consoleErrors.length === 0, `no console errors${consoleErrors.length ? ': ' + consoleErrors.join(' | ') : ''}`);
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(results, 'e2e.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal scrolling on a 390 px screen (overflow ${overflow})`);
  await page.screenshot({ path: path.join(results, 'e2e-narrow.png'), fullPage: true });

  // A third request, from the keyboard, is over the router's rate limit: the 429 and its retry time show.
  await page.setViewportSize({ width: 1200, height: 900 });
  await cpuBtn.focus();
  await page.keyboard.press('Enter');
  const alert = page.getByRole('alert');
  await alert.waitFor({ timeout: 15_000 });
  const alertText = await alert.textContent();
  check(/Rate limited: too many requests\. Retry in \d+ s\./.test(alertText), `429 shown with its retry time: ${alertText}`);
  check(await cpuBtn.isDisabled(), 'Re-run is disabled while rate limited');
  check((await page.locator('[data-testid=run]').count()) === 3, 'the earlier answers stay on the page');
  await page.screenshot({ path: path.join(results, 'e2e-ratelimit.png'), fullPage: true });

  // A router that needs API keys: without a key the page says so; with the key typed in, it answers,
  // and the key is remembered across a reload.
  const keyDir = mkdtempSync(path.join(os.tmpdir(), 'polyllm-e2e-keys-'));
  tmpDirs.push(keyDir);
  const secret = 'e2e-secret-key-4c1d';
  const keysFile = path.join(keyDir, 'keys.toml');
  writeFileSync(keysFile, `[[key]]\nname = "e2e"\nsha256 = "${createHash('sha256').update(secret).digest('hex')}"\n`);
  const keyedPort = await freePort();
  const keyed = start('router-keyed', bin('router'), [
    '--host', '127.0.0.1',
    '--port', String(keyedPort),
    '--backends', JSON.stringify({ m1: `http://127.0.0.1:${infPort}` }),
    '--ui-dir', path.join(uiDir, 'dist'),
    '--health-interval-ms', '500',
    '--api-keys', keysFile,
  ]);
  const keyedBase = `http://127.0.0.1:${keyedPort}`;
  await waitFor('keyed router to see m1 healthy', async () => {
    const b = await (await fetch(`${keyedBase}/backends`)).json();
    return b.backends?.some((x) => x.id === 'm1' && x.healthy);
  }, 60_000, keyed);
  const kp = await browser.newPage();
  await kp.goto(keyedBase + '/');
  await kp.getByRole('textbox', { name: 'Prompt' }).fill('The capital of Italy is');
  await kp.getByLabel('Max tokens').fill('4');
  await kp.getByRole('button', { name: 'Submit' }).click();
  const authAlert = kp.getByRole('alert');
  await authAlert.waitFor({ timeout: 15_000 });
  const authText = await authAlert.textContent();
  check(/Not authorized: .*API key/.test(authText), `a missing key is explained: ${authText}`);
  await kp.getByLabel('API key').fill(secret);
  await kp.getByRole('button', { name: 'Submit' }).click();
  await kp.locator('[data-testid=run] [data-testid=metrics]').first().waitFor({ timeout: answerTimeout });
  check(true, 'with the key typed in, the keyed router answers');
  await kp.reload();
  check((await kp.getByLabel('API key').inputValue()) === secret, 'the key is remembered across a reload');
  await kp.screenshot({ path: path.join(results, 'e2e-apikey.png'), fullPage: true });
  log('screenshots: ui/test-results/e2e.png, e2e-narrow.png, e2e-ratelimit.png, e2e-apikey.png');
}

let code = 0;
process.on('SIGINT', () => stopAll().then(() => process.exit(130)));
process.on('SIGTERM', () => stopAll().then(() => process.exit(143)));
try {
  await main();
  log('PASS');
} catch (e) {
  code = 1;
  console.error('[e2e] FAIL:', e?.stack ?? e);
  try {
    const p = browser?.pages?.()[0];
    if (p) await p.screenshot({ path: path.join(results, 'e2e-failure.png'), fullPage: true });
  } catch {
    /* best effort */
  }
} finally {
  await stopAll();
}
process.exit(code);
