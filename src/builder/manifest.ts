/**
 * <name>.manifest.json: what went into the image. Deterministic: no times, no host paths beyond
 * the spec's own inputs, no stage names or timings (those are in the --json result).
 */
import {RDK_VERSION} from '../common/version.js'
import type {BuildContext} from './context.js'
import {compressorVersion} from './compress.js'
import {CPIO_FORMAT} from './cpio.js'
import {bootKernelArgs, kernelCmdline} from './spec.js'

/** The manifest: deterministic (no times, no host paths beyond the spec's own inputs). */
export async function buildManifest(ctx: BuildContext): Promise<Record<string, unknown>> {
  const {output: _o, cacheDir: _c, ...spec} = ctx.spec
  const sizes = ctx.tree.sizeBySource()
  return {
    rdk: {version: RDK_VERSION, cpio: CPIO_FORMAT, compressor: await compressorVersion(ctx.spec.compress)},
    name: ctx.spec.name,
    flavor: ctx.spec.flavor,
    spec,
    kernelCmdline: kernelCmdline(bootKernelArgs(ctx.flavor, ctx.spec)),
    elements: ctx.elements.map((e) => {
      const s = sizes.find((x) => x.source === e.name)
      return {name: e.name, description: e.manifest.description, origin: e.builtin ? 'built-in' : 'user', bytes: s?.bytes ?? 0, files: s?.files ?? 0}
    }),
    packages: [...ctx.packages].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    kernel: ctx.kernel ? {version: ctx.kernel.version ?? null, source: ctx.kernel.source ?? null} : null,
    tree: {digest: ctx.tree.digest(), entries: ctx.tree.size, bytes: sizes.reduce((n, s) => n + s.bytes, 0)},
    sizes,
    artefacts: ctx.outputs
      .all()
      .filter((a) => a.kind !== 'manifest')
      .map((a) => ({file: a.file, kind: a.kind, size: a.size, sha256: a.sha256})),
    ...ctx.manifestExtra,
  }
}
