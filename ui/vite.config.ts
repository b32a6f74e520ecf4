import { defineConfig } from 'vitest/config';

// The router serves ui/dist at /; in `npm run dev` the API calls go to ROUTER_URL.
const router = process.env.ROUTER_URL ?? 'http://127.0.0.1:8080';
const api = ['/generate', '/backends', '/last_request_stats', '/health', '/metrics'];

export default defineConfig({
  esbuild: { jsx: 'automatic' },
  build: { outDir: 'dist', emptyOutDir: true },
  server: { proxy: Object.fromEntries(api.map((p) => [p, { target: router, changeOrigin: true }])) },
  test: { include: ['src/**/*.test.ts'], environment: 'node' },
});
