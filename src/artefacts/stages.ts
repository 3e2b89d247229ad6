/**
 * Build stages for the boot formats (`rdk build --format iso|pxe|ipxe|tar|zip`). They run after
 * pack-initramfs and write-kernel and before write-artefacts, and write only through
 * `ctx.outputs.add()`, so a failing build leaves nothing behind.
 *
 * The bundles (tar, zip) hold every boot artefact, so the ISO, PXE tree and iPXE script are made
 * for them too (in the scratch directory) when they were not asked for as formats of their own.
 * The iPXE script's base URL comes from the spec's ipxeBaseUrl ($RDK_IPXE_BASE_URL by default; else the URLs are relative to the
 * script).
 */
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import type {BuildContext} from '../builder/context.js'
import {BuildError} from '../builder/errors.js'
import type {Stage} from '../builder/registry.js'
import {bootKernelArgs, type Format} from '../builder/spec.js'
import {BUNDLE_EXTENSIONS, sha256Line, writeBundle, type BundleEntry, type BundleFormat} from './bundle.js'
import {volumeLabel} from './common.js'
import {writeIpxeScript} from './ipxe.js'
import {makeIso} from './iso.js'
import {makePxeTree} from './pxe.js'

/** What write-artefacts' manifest would say, handed in by the builder (no import cycle). */
export type ManifestFn = (ctx: BuildContext) => Promise<Record<string, unknown>>

const BUNDLES: readonly Format[] = ['tar', 'zip']

function wanted(ctx: BuildContext, format: Format): 'output' | 'bundle' | undefined {
  if (ctx.spec.formats.includes(format)) return 'output'
  if (ctx.spec.formats.some((f) => BUNDLES.includes(f))) return 'bundle'
  return undefined
}

function inputs(ctx: BuildContext): {kernel: string; initrd: string} {
  if (!ctx.kernel) throw new BuildError(`no kernel image: no stage of flavor '${ctx.flavor.name}' provided one`)
  const initrd = ctx.outputs.byKind('initramfs')
  if (!initrd) throw new BuildError('no initramfs: pack-initramfs did not run')
  return {kernel: ctx.kernel.path, initrd: initrd.tempPath}
}

/** Where a product goes: the output's temp path, or the scratch directory for a bundle. */
function target(ctx: BuildContext, kind: string, file: string, how: 'output' | 'bundle'): string {
  const path = how === 'output' ? ctx.outputs.add(kind, file).tempPath : join(ctx.workDir, 'bundle', file)
  ctx.data.set(`artefact:${kind}`, {file, path})
  return path
}

export const isoStage: Stage = {
  name: 'make-iso',
  description: 'write <name>.iso: hybrid BIOS (ISOLINUX) + UEFI (GRUB) ISO, CD and disk, kernel args baked in',
  produces: ['iso'],
  async run(ctx) {
    const how = wanted(ctx, 'iso')
    if (!how) return 'skipped: iso not requested'
    const path = target(ctx, 'iso', `${ctx.spec.name}.iso`, how)
    await ensureScratch(ctx)
    const r = await makeIso({
      ...inputs(ctx),
      output: path,
      kernelArgs: bootKernelArgs(ctx.flavor, ctx.spec),
      label: volumeLabel(ctx.spec.name),
      title: ctx.spec.name,
      sourceDateEpoch: ctx.spec.sourceDateEpoch,
      workDir: ctx.workDir,
    })
    return `${(r.size / 1e6).toFixed(1)} MB, label ${r.label}${how === 'bundle' ? ' (for the bundle)' : ''}`
  },
}

export const pxeStage: Stage = {
  name: 'make-pxe',
  description: 'write <name>-pxe/: TFTP tree with pxelinux (BIOS) and GRUB (UEFI), kernel args baked in',
  produces: ['pxe'],
  async run(ctx) {
    const how = wanted(ctx, 'pxe')
    if (!how) return 'skipped: pxe not requested'
    const path = target(ctx, 'pxe', `${ctx.spec.name}-pxe`, how)
    await ensureScratch(ctx)
    const r = await makePxeTree({...inputs(ctx), output: path, name: ctx.spec.name, kernelArgs: bootKernelArgs(ctx.flavor, ctx.spec), sourceDateEpoch: ctx.spec.sourceDateEpoch, workDir: ctx.workDir})
    return `${r.files.length} files${how === 'bundle' ? ' (for the bundle)' : ''}`
  },
}

export const ipxeStage: Stage = {
  name: 'make-ipxe',
  description: 'write <name>.ipxe: iPXE script loading kernel + initramfs over HTTP (ipxeBaseUrl or relative URLs)',
  produces: ['ipxe'],
  async run(ctx) {
    const how = wanted(ctx, 'ipxe')
    if (!how) return 'skipped: ipxe not requested'
    const path = target(ctx, 'ipxe', `${ctx.spec.name}.ipxe`, how)
    await ensureScratch(ctx)
    const baseUrl = ctx.spec.ipxeBaseUrl || undefined
    await writeIpxeScript(path, {name: ctx.spec.name, baseUrl, kernelArgs: bootKernelArgs(ctx.flavor, ctx.spec)})
    return baseUrl ? `from ${baseUrl}` : 'URLs relative to the script'
  },
}

async function ensureScratch(ctx: BuildContext): Promise<void> {
  await mkdir(join(ctx.workDir, 'bundle'), {recursive: true})
}

/** The tar and zip bundles, then a `<file>.sha256` for every regular-file artefact. */
export function bundleStage(manifest: ManifestFn): Stage {
  return {
    name: 'make-bundles',
    description: 'write <name>.tar.gz / <name>.zip (all boot artefacts, manifest.json, SHA256SUMS) and <file>.sha256 files',
    produces: ['tar', 'zip'],
    async run(ctx) {
      const formats = BUNDLES.filter((f) => ctx.spec.formats.includes(f)) as BundleFormat[]
      if (formats.length === 0) return 'skipped: no bundle requested'
      const {kernel, initrd} = inputs(ctx)
      const name = ctx.spec.name
      const entries: BundleEntry[] = [
        {name: `${name}.kernel`, path: kernel},
        {name: `${name}.initramfs`, path: initrd},
      ]
      for (const kind of ['iso', 'ipxe', 'pxe']) {
        const a = ctx.data.get(`artefact:${kind}`) as {file: string; path: string} | undefined
        if (!a) throw new BuildError(`the bundle needs the ${kind} artefact, but make-${kind} did not write it`)
        entries.push({name: a.file, path: a.path})
      }
      const m = await manifest(ctx)
      delete m.artefacts
      const notes: string[] = []
      for (const f of formats) {
        const a = ctx.outputs.add(f, `${name}${BUNDLE_EXTENSIONS[f]}`)
        const r = await writeBundle(f, a.tempPath, entries, {manifest: m, sourceDateEpoch: ctx.spec.sourceDateEpoch})
        notes.push(`${a.file}: ${r.files.length + 1} files`)
      }
      // IPA's CI publishes <file>.sha256 next to each file; `sha256sum -c <file>.sha256` checks it.
      for (const a of [...ctx.outputs.all()]) {
        if (['manifest', 'sha256', 'pxe'].includes(a.kind)) continue
        const s = ctx.outputs.add('sha256', `${a.file}.sha256`)
        await writeFile(s.tempPath, await sha256Line(a.tempPath, a.file), {mode: 0o644})
      }
      return notes.join(', ')
    },
  }
}

/** The format stages in order, for the generic stage list (before write-artefacts). */
export function artefactStages(manifest: ManifestFn): Stage[] {
  return [isoStage, pxeStage, ipxeStage, bundleStage(manifest)]
}
