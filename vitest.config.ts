/**
 * Test files: `<area>-<what>[-vm].e2e.test.ts` for a test that starts qemu, Ironic or
 * ironic-inspector (`-vm` when it boots qemu), `*.test.ts` for the rest; test/harness/ tests the
 * harnesses (test/helpers/, bench/lib/). `npm test` runs lint, build and every file;
 * `npm run test:unit` (the quick loop) leaves the e2e files out.
 */
import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // e2e tests start real processes (Ironic, the agent, qemu): keep files sequential on 2 cores
    fileParallelism: false,
    reporters: ['default'],
  },
})
