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
