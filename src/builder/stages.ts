/**
 * The shared stages: every flavor's stage list (src/flavors/<flavor>/index.ts) is made of these
 * and its own. Generic ones here, the boot formats (make-iso, make-pxe, make-ipxe, make-bundles)
 * in format-stages.ts, re-exported below so a flavor imports every shared stage from this module.
 */
import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream, statSync} from 'node:fs'
import {copyFile, rm, writeFile} from 'node:fs/promises'
import {pipeline} from 'node:stream/promises'
import {join} from 'node:path'
import {assembleElement, assembleFromSpec} from './assemble.js'
import {compressFile, compressorVersion} from './compress.js'
import {CPIO_FORMAT, resolveOwners, writeCpio} from './cpio.js'
import {planLayers} from './layers.js'
import {sha256File} from './tree.js'
import {ElementCatalog, elementSearchPaths, HOOK_PHASES, hooksFor, resolveElements, type Element} from './elements.js'
import type {FlavorDefinition} from './stage.js'
import type {BuildSpec} from './spec.js'
import {BuildError} from './errors.js'
import {runHooks} from './hooks.js'
import {FINAL_STAGE, type Stage} from './stage.js'

export {bundleStage, ipxeStage, isoStage, pxeStage} from './format-stages.js'
export {buildManifest} from './manifest.js'
import {listFiles} from '../artefacts/common.js'
import {buildManifest} from './manifest.js'

export function humanBytes(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} B`
}

function cachedSize(path: string): number {
  return statSync(path).size
}

export async function sha256OfFile(path: string): Promise<{sha256: string; size: number}> {
  // A directory artefact (the PXE tree): the digest of its sha256sum-style listing, total size.
  if (statSync(path).isDirectory()) {
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

/** The flavor's default and the spec's elements with their dependencies, in order (reads element.yaml files only). */
export async function resolveBuildElements(spec: BuildSpec, flavor: FlavorDefinition): Promise<{catalog: ElementCatalog; elements: Element[]}> {
  const catalog = await ElementCatalog.scan(elementSearchPaths(spec.elementPaths))
  const elements = await resolveElements(catalog, {
    roots: [
      ...flavor.defaultElements.map((name) => ({name, requiredBy: `flavor ${flavor.name}`})),
      ...spec.elements.map((name) => ({name, requiredBy: 'the build spec'})),
      // Baked SSH keys need an SSH server: whatever element provides `sshd` (dynamic-login).
      ...(spec.sshKeys.length ? [{name: 'sshd', requiredBy: 'sshKeys (--ssh-key)'}] : []),
    ],
  })
  return {catalog, elements}
}

export const resolveElementsStage: Stage = {
  name: 'resolve-elements',
  description: "find the flavor's default and the spec's elements, pull in dependencies, order them",
  async run(ctx) {
    const {catalog, elements} = await resolveBuildElements(ctx.spec, ctx.flavor)
    ctx.catalog = catalog
    ctx.elements = elements
    for (const el of ctx.elements) for (const h of el.ignoredHooks) ctx.log(`warning: element ${el.name}: ${h} is not run`)
    return `${ctx.elements.length} element${ctx.elements.length === 1 ? '' : 's'}: ${ctx.elements.map((e) => e.name).join(', ')}`
  },
}

function hookStage(name: string, description: string, phases: readonly (typeof HOOK_PHASES)[number][]): Stage {
  return {
    name,
    description,
    skip: (ctx) => (phases.some((ph) => hooksFor(ctx.elements, ph).length) ? undefined : `no ${phases.length === 1 ? phases[0] : 'hook'} scripts`),
    async run(ctx) {
      const r = await runHooks(ctx.tree, {
        elements: ctx.elements,
        phases,
        stageDir: join(ctx.workDir, `stage-${name}`),
        env: ctx.hookEnv(),
        log: (l) => ctx.log(l),
      })
      return `${r.hooks.length} hook${r.hooks.length === 1 ? '' : 's'}; ${r.added} added, ${r.changed} changed, ${r.removed} removed`
    },
  }
}

/** root.d: before packages are installed (the tree holds nothing yet). */
export const rootHooksStage = hookStage('root-hooks', 'run root.d hooks (before packages)', ['root.d'])

/** Every other phase, in diskimage-builder's order, once the tree is assembled. */
export const runHooksStage = hookStage('run-hooks', `run ${HOOK_PHASES.slice(1).join(', ')} hooks against a staged copy of the tree`, HOOK_PHASES.slice(1))

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
  skip: (ctx) => (ctx.needs('initramfs') ? undefined : 'no format needs an initramfs'),
  async run(ctx) {
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
        const inputs = {
          layer: layer.digest,
          firstIno: layer.firstIno,
          owners,
          cpio: CPIO_FORMAT,
          compress: ctx.spec.compress,
          compressor,
          x86,
          mtime: ctx.spec.sourceDateEpoch,
        }
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
    ctx.initramfs = {
      treeDigest: digest,
      compressor,
      layers: packed.map((p) => ({
        name: p.layer.name,
        digest: p.layer.digest,
        entries: p.layer.entries,
        bytes: p.layer.bytes,
        compressed: p.size,
        cached: p.cached.hit,
      })),
    }
    const detail = packed.map((p) => `${p.layer.name} ${humanBytes(p.size)}${p.cached.hit ? ' (cached)' : ''}`).join(', ')
    if (reused === packed.length) return `reused from cache (${packed.length} layers, tree ${digest.slice(0, 12)})`
    return `${packed.length} layers, ${reused} from cache; ${humanBytes(cpioBytes)} cpio packed → ${ctx.spec.compress}: ${detail}`
  },
}

export const writeKernelStage: Stage = {
  name: 'write-kernel',
  description: 'copy the kernel image to <name>.kernel',
  produces: ['kernel'],
  skip: (ctx) => (ctx.spec.formats.includes('kernel') ? undefined : 'kernel format not requested'),
  async run(ctx) {
    if (!ctx.kernel) throw new BuildError(`no kernel image: no stage of flavor '${ctx.flavor.name}' provided one`)
    const a = ctx.outputs.add('kernel', `${ctx.spec.name}.kernel`)
    await copyFile(ctx.kernel.path, a.tempPath)
    return ctx.kernel.version ? `kernel ${ctx.kernel.version}` : undefined
  },
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
    const text = `${JSON.stringify(await buildManifest(ctx), null, 2)}\n`
    await writeFile(m.tempPath, text, {mode: 0o644})
    Object.assign(m, {size: Buffer.byteLength(text), sha256: createHash('sha256').update(text).digest('hex')})
    await ctx.outputs.commit()
    return ctx.outputs
      .all()
      .map((a) => a.file)
      .join(', ')
  },
}
