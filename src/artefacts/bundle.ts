/**
 * Release bundles: one `.tar.gz` (tar-stream + rdk's fixed-header gzip) or `.zip` (yazl) holding
 * the boot artefacts, a `manifest.json` (build spec, elements, package versions, every file's size
 * and sha256) and a `SHA256SUMS` that `sha256sum -c` verifies after unpacking; plus the per-file
 * `<file>.sha256` lines IPA's CI publishes next to its tarballs.
 *
 * Reproducible: entries sorted by byte order, every time = SOURCE_DATE_EPOCH, owner 0:0 with no
 * user/group names, modes 0644/0755, the gzip header pinned, zip times stored as DOS times of the
 * UTC date (no extended-timestamp field, no dependence on the machine's time zone).
 */
import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream} from 'node:fs'
import {stat} from 'node:fs/promises'
import type {Readable} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {basename, join, posix} from 'node:path'
import tar from 'tar-stream'
import yazl from 'yazl'
import {gzipTo} from '../common/gzip.js'
import {ArtefactError, atomicOutput, listFiles, sha256File} from './common.js'

export type BundleFormat = 'tar' | 'zip'

export const BUNDLE_EXTENSIONS: Record<BundleFormat, string> = {tar: '.tar.gz', zip: '.zip'}

export interface BundleEntry {
  /** Path inside the archive (a file, or a directory whose files go in under it). */
  name: string
  /** Host path. */
  path: string
}

export interface BundleFile {
  name: string
  size: number
  sha256: string
}

export interface BundleResult {
  path: string
  files: BundleFile[]
}

interface Item {
  name: string
  /** Host path, or the bytes for generated files. */
  source: string | Buffer
  size: number
  sha256?: string
}

const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b))

/** `sha256  name` lines (two spaces: sha256sum's text mode), sorted by name. */
export function sha256sums(files: readonly BundleFile[]): string {
  return [...files]
    .sort((a, b) => byBytes(a.name, b.name))
    .map((f) => `${f.sha256}  ${f.name}\n`)
    .join('')
}

/** Expand entries (directories → their files), hash everything, add manifest.json and SHA256SUMS. */
async function collect(entries: readonly BundleEntry[], manifest: Record<string, unknown>): Promise<{items: Item[]; files: BundleFile[]}> {
  const items: Item[] = []
  for (const e of entries) {
    if (!/^[\w.+-]+(\/[\w.+-]+)*$/.test(e.name) || e.name.split('/').some((p) => p === '.' || p === '..'))
      throw new ArtefactError(`bundle entry name '${e.name}' is not a plain relative path`)
    const st = await stat(e.path).catch(() => undefined)
    if (!st) throw new ArtefactError(`bundle input ${e.path} does not exist`)
    if (st.isDirectory()) {
      for (const rel of await listFiles(e.path)) {
        const p = join(e.path, rel)
        items.push({name: posix.join(e.name, rel.split('/').join('/')), source: p, size: (await stat(p)).size})
      }
    } else if (st.isFile()) {
      items.push({name: e.name, source: e.path, size: st.size})
    } else {
      throw new ArtefactError(`bundle input ${e.path} is not a file or directory`)
    }
  }
  const seen = new Set<string>()
  for (const it of items) {
    if (seen.has(it.name) || it.name === 'manifest.json' || it.name === 'SHA256SUMS')
      throw new ArtefactError(`bundle: '${it.name}' would be in the archive twice`)
    seen.add(it.name)
    it.sha256 = (await sha256File(it.source as string)).sha256
  }
  items.sort((a, b) => byBytes(a.name, b.name))
  const files: BundleFile[] = items.map((i) => ({name: i.name, size: i.size, sha256: i.sha256!}))
  const manifestText = Buffer.from(`${JSON.stringify({...manifest, files}, null, 2)}\n`)
  const manifestFile = {name: 'manifest.json', size: manifestText.length, sha256: createHash('sha256').update(manifestText).digest('hex')}
  const sums = Buffer.from(sha256sums([...files, manifestFile]))
  items.push({name: 'manifest.json', source: manifestText, size: manifestText.length, sha256: manifestFile.sha256})
  items.push({name: 'SHA256SUMS', source: sums, size: sums.length})
  items.sort((a, b) => byBytes(a.name, b.name))
  return {items, files: [...files, manifestFile]}
}

/** Directories the items live in (each once, parents first). */
function dirsOf(items: readonly Item[]): string[] {
  const dirs = new Set<string>()
  for (const it of items) {
    const parts = it.name.split('/').slice(0, -1)
    for (let i = 1; i <= parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
  }
  return [...dirs].sort(byBytes)
}

async function writeTarGz(out: string, items: readonly Item[], epoch: number): Promise<void> {
  const pack = tar.pack()
  const mtime = new Date(epoch * 1000)
  const header = {mtime, uid: 0, gid: 0, uname: '', gname: ''}
  const done = gzipTo(pack as unknown as Readable, out)
  const entries = [...dirsOf(items).map((d) => ({name: `${d}/`, dir: true as const})), ...items.map((i) => ({...i, dir: false as const}))]
  entries.sort((a, b) => byBytes(a.name, b.name))
  for (const e of entries) {
    if (e.dir) {
      pack.entry({...header, name: e.name, type: 'directory', mode: 0o755})
      continue
    }
    if (Buffer.isBuffer(e.source)) {
      pack.entry({...header, name: e.name, type: 'file', mode: 0o644, size: e.size}, e.source)
    } else {
      const w = pack.entry({...header, name: e.name, type: 'file', mode: 0o644, size: e.size})
      await pipeline(createReadStream(e.source, {highWaterMark: 1 << 20}), w)
    }
  }
  pack.finalize()
  await done
}

/** These are compressed already: deflating them again costs seconds and saves nothing. */
const STORED = /\.(kernel|initramfs|iso|efi|0|c32|gz|xz|zst)$/

async function writeZip(out: string, items: readonly Item[], epoch: number): Promise<void> {
  const zip = new yazl.ZipFile()
  // DOS times are local times without a zone: give yazl a Date whose local fields are the UTC ones.
  const u = new Date(epoch * 1000)
  const mtime = new Date(u.getUTCFullYear(), u.getUTCMonth(), u.getUTCDate(), u.getUTCHours(), u.getUTCMinutes(), u.getUTCSeconds())
  const common = {mtime, mode: 0o100644, forceDosTimestamp: true}
  for (const it of items) {
    const compress = !STORED.test(it.name)
    if (Buffer.isBuffer(it.source)) zip.addBuffer(it.source, it.name, {...common, compress})
    else zip.addReadStream(createReadStream(it.source, {highWaterMark: 1 << 20}), it.name, {...common, compress, size: it.size})
  }
  zip.end()
  await pipeline(zip.outputStream, createWriteStream(out, {mode: 0o644}))
}

/** Write a bundle atomically to `output`. */
export async function writeBundle(
  format: BundleFormat,
  output: string,
  entries: readonly BundleEntry[],
  opts: {manifest?: Record<string, unknown>; sourceDateEpoch: number},
): Promise<BundleResult> {
  const {items, files} = await collect(entries, opts.manifest ?? {})
  await atomicOutput(output, (tmp) => (format === 'tar' ? writeTarGz(tmp, items, opts.sourceDateEpoch) : writeZip(tmp, items, opts.sourceDateEpoch)))
  return {path: output, files}
}

/** The `<file>.sha256` text for one file: `sha256  <name>` (sha256sum -c checks it next to the file). */
export async function sha256Line(path: string, name = basename(path)): Promise<string> {
  return `${(await sha256File(path)).sha256}  ${name}\n`
}
