// Bundle the agent into one ESM file (dist/agent.mjs) for ramdisks: no node_modules needed at run time.
import {build} from 'esbuild'

await build({
  entryPoints: ['src/agent/main.ts'],
  outfile: 'dist/agent.mjs',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  minify: true,
  // IPA's wire format carries class names (command_error.type, get_clean_steps keys): keep them.
  keepNames: true,
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
  // execa and friends are CommonJS-free ESM; this shim lets any bundled CJS call require().
  banner: {js: "import {createRequire as __rdkCreateRequire} from 'node:module';const require=__rdkCreateRequire(import.meta.url);"},
})
