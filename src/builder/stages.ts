/**
 * The generic stages every flavor is made of. Flavor-specific work (Debian packages, the kernel,
 * the agent bundle) plugs in by replacing the placeholders or adding stages (registry.ts).
 */
import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream, statSync} from 'node:fs'
import {copyFile, rm, writeFile} from 'node:fs/promises'
import {pipeline} from 'node:stream/promises'
import {join} from 'node:path'
import {assembleElement, assembleFromSpec} from './assemble.js'
import type {BuildContext} from './context.js'
import {compressFile, compressorVersion} from './compress.js'
import {CPIO_FORMAT, resolveOwners, writeCpio} from './cpio.js'
import {planLayers} from './layers.js'
import {sha256File} from './tree.js'
import {ElementCatalog, elementSearchPaths, HOOK_PHASES, resolveElements} from './elements.js'
import {BuildError} from './errors.js'
import {runHooks} from './hooks.js'
import {FINAL_STAGE, type Stage} from './registry.js'
import {bootKernelArgs, kernelCmdline} from './spec.js'
import {RDK_VERSION} from '../common/version.js'
import {artefactStages} from '../artefacts/stages.js'

export function humanBytes(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} B`
}

function cachedSize(path: string): number {
  return statSync(path).size
}

export async function sha256OfFile(path: string): Promise<{sha256: string; size: number}> {
  // A directory artefact (the PXE tree): the digest of its sha256sum-style listing, total size.
  if (statSync(path).isDirectory()) {
    const {listFiles} = await import('../artefacts/common.js')
    let lines = ''
    let total = 0
    for (const rel of await listFiles(path)) {
      const f = await sha256OfFile(join(path, rel))
      lines += `${f.sha256}  ${rel}\n`
      total += f.size
    }
    return {sha256: createHash('sha256').update(lines).digest('hex'), size: total}
  }
  const {hash, size} = await sha256File(path)
  return {sha256: hash, size}
}

export const resolveElementsStage: Stage = {
  name: 'resolve-elements',
  description: "find the flavor's default and the spec's elements, pull in dependencies, order them",
  async run(ctx) {
    const catalog = await ElementCatalog.scan(elementSearchPaths(ctx.spec.elementPaths))
    ctx.catalog = catalog
    ctx.elements = await resolveElements(catalog, {
      roots: [
        ...ctx.flavor.defaultElements.map((name) => ({name, requiredBy: `flavor ${ctx.flavor.name}`})),
        ...ctx.spec.elements.map((name) => ({name, requiredBy: 'the build spec'})),
        // Baked SSH keys need an SSH server: whatever element provides `sshd` (dynamic-login).
        ...(ctx.spec.sshKeys.length ? [{name: 'sshd', requiredBy: 'sshKeys (--ssh-key)'}] : []),
      ],
    })
    for (const el of ctx.elements) for (const h of el.ignoredHooks) ctx.log(`warning: element ${el.name}: ${h} is not run`)
    return `${ctx.elements.length} element${ctx.elements.length === 1 ? '' : 's'}: ${ctx.elements.map((e) => e.name).join(', ')}`
  },
}

function hookStage(name: string, description: string, phases: readonly (typeof HOOK_PHASES)[number][]): Stage {
  return {
    name,
    description,
    async run(ctx) {
      const r = await runHooks(ctx.tree, {elements: ctx.elements, phases, stageDir: join(ctx.workDir, `stage-${name}`), env: ctx.hookEnv(), log: (l) => ctx.log(l)})
      if (r.hooks.length === 0) return `skipped: no ${phases.length === 1 ? phases[0] : 'hook'} scripts`
      return `${r.hooks.length} hook${r.hooks.length === 1 ? '' : 's'}; ${r.added} added, ${r.changed} changed, ${r.removed} removed`
    },
  }
}

/** root.d: before packages are installed (the tree holds nothing yet). */
export const rootHooksStage = hookStage('root-hooks', 'run root.d hooks (before packages)', ['root.d'])

/** Every other phase, in diskimage-builder's order, once the tree is assembled. */
export const runHooksStage = hookStage('run-hooks', `run ${HOOK_PHASES.slice(1).join(', ')} hooks against a staged copy of the tree`, HOOK_PHASES.slice(1))

/** Placeholder until the Debian layer registers {replace: 'fetch-packages'}. */
export const fetchPackagesPlaceholder: Stage = {
  name: 'fetch-packages',
  description: 'download Debian packages and add their files to the tree (placeholder: the flavor module replaces it)',
  async run(ctx) {
    const reqs = ctx.packageRequests()
    if (reqs.length === 0) return 'skipped: no element asks for packages'
    const by = [...new Set(reqs.map((r) => r.element))]
    throw new BuildError(
      `element${by.length === 1 ? '' : 's'} ${by.join(', ')} need${by.length === 1 ? 's' : ''} Debian packages (${reqs.map((r) => r.name).join(', ')}), ` +
        `but flavor '${ctx.flavor.name}' has no package stage registered yet`,
    )
  },
}

/** Placeholder until the kernel code registers {replace: 'fetch-kernel'}. */
export const fetchKernelPlaceholder: Stage = {
  name: 'fetch-kernel',
  description: 'provide the kernel image (placeholder: the flavor module replaces it)',
  async run(ctx) {
    if (ctx.kernel) return `kernel ${ctx.kernel.version ?? ctx.kernel.path}`
    if (!ctx.needs('kernel')) return 'skipped: no format needs a kernel'
    throw new BuildError(
      `flavor '${ctx.flavor.name}' has no kernel stage registered yet, so formats ${ctx.spec.formats.filter((f) => f !== 'initramfs').join(', ')} cannot be built; use --format initramfs`,
    )
  },
}

export const assembleTreeStage: Stage = {
  name: 'assemble-tree',
  description: "add the elements' directories, files, templates, symlinks and device nodes, then the spec's SSH keys and hardware managers",
  async run(ctx) {
    const names = ctx.elements.map((e) => e.name)
    for (const el of ctx.elements) await assembleElement(ctx.tree, el, ctx.spec, names)
    await assembleFromSpec(ctx.tree, ctx.spec)
    return `${ctx.tree.size} entries`
  },
}

export const packInitramfsStage: Stage = {
  name: 'pack-initramfs',
  description: 'write the tree as deterministic newc cpio layers (src/builder/layers.ts), compress each (cached by its digest) and concatenate them',
  produces: ['initramfs'],
  async run(ctx) {
    if (!ctx.needs('initramfs')) return 'skipped: no format needs an initramfs'
    if (ctx.tree.size === 0) throw new BuildError('the image tree is empty: no element added anything')
    const digest = ctx.tree.digest()
    const compressor = await compressorVersion(ctx.spec.compress)
    const owners = Object.fromEntries([...(await resolveOwners(ctx.tree))].sort(([a], [b]) => (a < b ? -1 : 1)))
    const layers = planLayers(ctx.tree, ctx.layers)
    let cpioBytes = 0
    const packed = await Promise.all(
      layers.map(async (layer) => {
        // Mostly executables and libraries: worth the x86 BCJ filter (xz only).
        const x86 = layer.x86Bytes * 2 > layer.bytes
        const inputs = {layer: layer.digest, firstIno: layer.firstIno, owners, cpio: CPIO_FORMAT, compress: ctx.spec.compress, compressor, x86, mtime: ctx.spec.sourceDateEpoch}
        const cached = await ctx.cache.file('initramfs-layer', inputs, async (out) => {
          const cpio = join(ctx.workDir, `initramfs-${layer.index}-${layer.name}.cpio`)
          cpioBytes += (await writeCpio(ctx.tree, cpio, {mtime: ctx.spec.sourceDateEpoch, include: layer.include, firstIno: layer.firstIno})).bytes
          await compressFile(ctx.spec.compress, cpio, out, {x86})
          await rm(cpio, {force: true})
        })
        return {layer, cached, size: cachedSize(cached.path)}
      }),
    )
    const a = ctx.outputs.add('initramfs', `${ctx.spec.name}.initramfs`)
    const out = createWriteStream(a.tempPath, {mode: 0o644})
    try {
      for (const p of packed) await pipeline(createReadStream(p.cached.path, {highWaterMark: 1 << 20}), out, {end: false})
    } finally {
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())))
    }
    const reused = packed.filter((p) => p.cached.hit).length
    ctx.data.set('initramfs', {treeDigest: digest, compressor, layers: packed.map((p) => ({name: p.layer.name, digest: p.layer.digest, entries: p.layer.entries, bytes: p.layer.bytes, compressed: p.size, cached: p.cached.hit}))})
    const detail = packed.map((p) => `${p.layer.name} ${humanBytes(p.size)}${p.cached.hit ? ' (cached)' : ''}`).join(', ')
    if (reused === packed.length) return `reused from cache (${packed.length} layers, tree ${digest.slice(0, 12)})`
    return `${packed.length} layers, ${reused} from cache; ${humanBytes(cpioBytes)} cpio packed → ${ctx.spec.compress}: ${detail}`
  },
}

export const writeKernelStage: Stage = {
  name: 'write-kernel',
  description: 'copy the kernel image to <name>.kernel',
  produces: ['kernel'],
  async run(ctx) {
    if (!ctx.spec.formats.includes('kernel')) return 'skipped: kernel format not requested'
    if (!ctx.kernel) throw new BuildError(`no kernel image: no stage of flavor '${ctx.flavor.name}' provided one`)
    const a = ctx.outputs.add('kernel', `${ctx.spec.name}.kernel`)
    await copyFile(ctx.kernel.path, a.tempPath)
    return ctx.kernel.version ? `kernel ${ctx.kernel.version}` : undefined
  },
}

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
    artefacts: ctx.outputs.all().filter((a) => a.kind !== 'manifest').map((a) => ({file: a.file, kind: a.kind, size: a.size, sha256: a.sha256})),
    ...ctx.manifestExtra,
  }
}

export const writeArtefactsStage: Stage = {
  name: FINAL_STAGE,
  description: 'check every requested format was produced, hash the artefacts, write <name>.manifest.json, then rename everything into place',
  async run(ctx) {
    for (const f of ctx.spec.formats) {
      if (!ctx.outputs.byKind(f)) throw new BuildError(`format '${f}' was requested but no stage produced it`)
    }
    for (const a of ctx.outputs.all()) Object.assign(a, await sha256OfFile(a.tempPath))
    const m = ctx.outputs.add('manifest', `${ctx.spec.name}.manifest.json`)
    const text = JSON.stringify(await buildManifest(ctx), null, 2) + '\n'
    await writeFile(m.tempPath, text, {mode: 0o644})
    Object.assign(m, {size: Buffer.byteLength(text), sha256: createHash('sha256').update(text).digest('hex')})
    await ctx.outputs.commit()
    return ctx.outputs.all().map((a) => a.file).join(', ')
  },
}

/** The generic stage list, in order, with the placeholders. */
export function genericStages(): Stage[] {
  return [
    resolveElementsStage, rootHooksStage, fetchPackagesPlaceholder, fetchKernelPlaceholder, assembleTreeStage, runHooksStage, packInitramfsStage, writeKernelStage,
    // iso, pxe, ipxe, tar, zip (src/artefacts/stages.ts)
    ...artefactStages(buildManifest),
    writeArtefactsStage,
  ]
}
