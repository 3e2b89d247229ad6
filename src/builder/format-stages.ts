/**
 * Build stages for the boot formats (`rdk build --format iso|pxe|ipxe|tar|zip`), on top of the
 * artefact writers in src/artefacts/ (which know nothing of the builder). They run after
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
import {BUNDLE_EXTENSIONS, sha256Line, writeBundle, type BundleEntry, type BundleFormat} from '../artefacts/bundle.js'
import {volumeLabel} from '../artefacts/common.js'
import {writeIpxeScript} from '../artefacts/ipxe.js'
import {makeIso} from '../artefacts/iso.js'
import {makePxeTree} from '../artefacts/pxe.js'
import type {BootFileKind, BuildContext, PlanContext} from './context.js'
import {BuildError} from './errors.js'
import {buildManifest} from './manifest.js'
import type {Stage} from './stage.js'
import {bootKernelArgs, type Format} from './spec.js'

const BUNDLES: readonly Format[] = ['tar', 'zip']

function wanted(ctx: PlanContext, format: Format): 'output' | 'bundle' | undefined {
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
function target(ctx: BuildContext, kind: BootFileKind, file: string, how: 'output' | 'bundle'): string {
  const path = how === 'output' ? ctx.outputs.add(kind, file).tempPath : join(ctx.workDir, 'bundle', file)
  ctx.bootFiles[kind] = {file, path}
  return path
}

const notWanted = (format: Format) => (ctx: PlanContext) => (wanted(ctx, format) ? undefined : `${format} not requested`)

export const isoStage: Stage = {
  name: 'make-iso',
  description: 'write <name>.iso: hybrid BIOS (ISOLINUX) + UEFI (GRUB) ISO, CD and disk, kernel args baked in',
  produces: ['iso'],
  skip: notWanted('iso'),
  async run(ctx) {
    const how = wanted(ctx, 'iso')!
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
  skip: notWanted('pxe'),
  async run(ctx) {
    const how = wanted(ctx, 'pxe')!
    const path = target(ctx, 'pxe', `${ctx.spec.name}-pxe`, how)
    await ensureScratch(ctx)
    const r = await makePxeTree({
      ...inputs(ctx),
      output: path,
      name: ctx.spec.name,
      kernelArgs: bootKernelArgs(ctx.flavor, ctx.spec),
      sourceDateEpoch: ctx.spec.sourceDateEpoch,
      workDir: ctx.workDir,
    })
    return `${r.files.length} files${how === 'bundle' ? ' (for the bundle)' : ''}`
  },
}

export const ipxeStage: Stage = {
  name: 'make-ipxe',
  description: 'write <name>.ipxe: iPXE script loading kernel + initramfs over HTTP (ipxeBaseUrl or relative URLs)',
  produces: ['ipxe'],
  skip: notWanted('ipxe'),
  async run(ctx) {
    const how = wanted(ctx, 'ipxe')!
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
export const bundleStage: Stage = {
  name: 'make-bundles',
  description: 'write <name>.tar.gz / <name>.zip (all boot artefacts, manifest.json, SHA256SUMS) and <file>.sha256 files',
  produces: ['tar', 'zip'],
  skip: (ctx) => (ctx.spec.formats.some((f) => BUNDLES.includes(f)) ? undefined : 'no bundle requested'),
  async run(ctx) {
    const formats = BUNDLES.filter((f) => ctx.spec.formats.includes(f)) as BundleFormat[]
    const {kernel, initrd} = inputs(ctx)
    const name = ctx.spec.name
    const entries: BundleEntry[] = [
      {name: `${name}.kernel`, path: kernel},
      {name: `${name}.initramfs`, path: initrd},
    ]
    for (const kind of ['iso', 'ipxe', 'pxe'] as const) {
      const a = ctx.bootFiles[kind]
      if (!a) throw new BuildError(`the bundle needs the ${kind} artefact, but make-${kind} did not write it`)
      entries.push({name: a.file, path: a.path})
    }
    const m = await buildManifest(ctx)
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
