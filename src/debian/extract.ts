/**
 * Unpack a .deb's data archive into a TreeSink without dpkg: `dpkg-deb --fsys-tarfile` gives the
 * data tar (whatever its compression), tar-stream reads it in Node. Maintainer scripts never run.
 *
 * Paths are normalised (`./usr/bin/x` → `usr/bin/x`); an entry (or hard-link target) with a `..`
 * component or an absolute path is refused with TarTraversalError before anything of it is
 * written. Modes (setuid included) are kept, ownership is not (everything in an image is root's).
 * Hard links become copies (the sink has no hard links). Device nodes and FIFOs are skipped and
 * reported.
 *
 * usr-merge: bookworm packages still ship files under /bin, /sbin, /lib, /lib32, /lib64, /libx32.
 * With `usrMerge` (the default) those paths are rewritten to /usr/…, exactly where dpkg puts them on
 * a merged-/usr system (through the /bin → usr/bin symlinks), and addUsrMergeLinks() creates the
 * compat symlinks /bin → usr/bin, /sbin → usr/sbin, /lib → usr/lib, /lib64 → usr/lib64. A symlink
 * that the rewrite makes point at itself (e.g. /usr/sbin/x → /sbin/x) is dropped.
 */
import {extract as tarExtract, type Header as TarHeader} from 'tar-stream'
import {createHash} from 'node:crypto'
import {mkdir, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join, posix} from 'node:path'
import {runBuffer} from '../common/exec.js'
import {DirSink, type TreeSink} from './sink.js'

export class TarTraversalError extends Error {
  constructor(
    readonly entry: string,
    readonly archive: string,
    reason: string,
  ) {
    super(`refusing to extract ${archive}: entry ${JSON.stringify(entry)} ${reason}`)
    this.name = 'TarTraversalError'
  }
}

/** Top-level directories that usr-merge moves into /usr. */
export const USR_MERGED_DIRS = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'] as const

/** The compat symlinks a merged-/usr tiny image carries. */
export const USR_MERGE_LINKS: ReadonlyArray<readonly [string, string]> = [
  ['bin', 'usr/bin'],
  ['sbin', 'usr/sbin'],
  ['lib', 'usr/lib'],
  ['lib64', 'usr/lib64'],
]

/** Rewrite a canonical image path (no leading '/') to its merged-/usr location. */
export function usrMergePath(path: string): string {
  const slash = path.indexOf('/')
  const top = slash < 0 ? path : path.slice(0, slash)
  return (USR_MERGED_DIRS as readonly string[]).includes(top) ? `usr/${path}` : path
}

/** Create /bin → usr/bin, /sbin → usr/sbin, /lib → usr/lib, /lib64 → usr/lib64 (and their targets). */
export function addUsrMergeLinks(sink: TreeSink): void {
  sink.addDir('usr', 0o755)
  for (const [link, target] of USR_MERGE_LINKS) {
    sink.addDir(target, 0o755)
    sink.addSymlink(link, target, {source: 'usrmerge'})
  }
}

/**
 * Canonical path of a tar member name: `./usr/bin/x`, `usr/bin/x/` → `usr/bin/x`; `./` → ''.
 * Throws TarTraversalError for absolute names and `..` components.
 */
export function normaliseEntryPath(name: string, archive = 'archive'): string {
  if (name.includes('\0')) throw new TarTraversalError(name, archive, 'contains a NUL byte')
  if (name.startsWith('/')) throw new TarTraversalError(name, archive, 'is an absolute path (outside the extraction root)')
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.includes('..')) throw new TarTraversalError(name, archive, "has a '..' component (path traversal)")
  return parts.join('/')
}

export interface ExtractEntryInfo {
  /** Final image path (after usr-merge), no leading '/'. */
  path: string
  /** Path as in the archive, normalised, before usr-merge. */
  archivePath: string
  type: 'file' | 'directory' | 'symlink' | 'link'
  size: number
}

export interface ExtractOptions {
  /** Rewrite /bin, /sbin, /lib* into /usr (default true). */
  usrMerge?: boolean
  /** Keep only entries for which this returns true (called with the final path). Directories that are skipped are still created when a kept file needs them. */
  filter?: (entry: ExtractEntryInfo) => boolean
  /** Recorded as the `source` of every sink entry (normally the package name). */
  source?: string
  /** Name used in error messages. */
  archiveName?: string
}

export interface ExtractResult {
  files: {path: string; size: number; mode: number}[]
  dirs: string[]
  symlinks: {path: string; target: string}[]
  /** Hard links, written as copies. */
  hardlinks: {path: string; target: string}[]
  /** Entries not written: device nodes, FIFOs, self-referencing symlinks after usr-merge. */
  skipped: {path: string; reason: string}[]
  /** Bytes of file data written. */
  bytes: number
}

/** Paths under /usr/share that an image never needs (docs, man pages, locales, bug-report hooks, lintian). */
export const DOC_PREFIXES = [
  'usr/share/doc/',
  'usr/share/doc-base/',
  'usr/share/man/',
  'usr/share/info/',
  'usr/share/locale/',
  'usr/share/lintian/',
  'usr/share/bug/',
  'usr/share/bash-completion/',
  'usr/share/zsh/',
  'usr/share/fish/',
  'usr/share/menu/',
  'usr/share/metainfo/',
]

/** A filter dropping DOC_PREFIXES. */
export function noDocs(e: ExtractEntryInfo): boolean {
  const p = e.type === 'directory' ? `${e.path}/` : e.path
  return !DOC_PREFIXES.some((d) => p.startsWith(d) || d === p)
}

async function* entries(data: Buffer): AsyncGenerator<{header: TarHeader; body: () => Promise<Buffer>; skip: () => void}> {
  const ex = tarExtract()
  ex.end(data)
  for await (const entry of ex) {
    let consumed = false
    yield {
      header: entry.header,
      body: async () => {
        consumed = true
        const chunks: Buffer[] = []
        for await (const c of entry) chunks.push(c as Buffer)
        return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)
      },
      skip: () => {
        consumed = true
        entry.resume()
      },
    }
    if (!consumed) entry.resume()
  }
}

function entryType(h: TarHeader): ExtractEntryInfo['type'] | undefined {
  switch (h.type) {
    case 'file':
    case 'contiguous-file':
      return 'file'
    case 'directory':
    case 'symlink':
    case 'link':
      return h.type
    default:
      return undefined
  }
}

/**
 * Extract a tar archive (in memory) into `sink`. Pass 1 validates every name and notes hard-link
 * targets; pass 2 writes. Nothing is written if any entry is unsafe.
 */
export async function extractTar(data: Buffer, sink: TreeSink, opts: ExtractOptions = {}): Promise<ExtractResult> {
  const archive = opts.archiveName ?? 'archive'
  const usrMerge = opts.usrMerge ?? true
  const map = (p: string) => (usrMerge ? usrMergePath(p) : p)
  const result: ExtractResult = {files: [], dirs: [], symlinks: [], hardlinks: [], skipped: [], bytes: 0}

  // pass 1: validate, collect hard-link targets
  const linkTargets = new Set<string>()
  for await (const e of entries(data)) {
    normaliseEntryPath(e.header.name, archive)
    if (e.header.type === 'link') linkTargets.add(normaliseEntryPath(e.header.linkname ?? '', archive))
    e.skip()
  }

  // pass 2: write
  const kept = new Map<string, {data: Buffer; mode: number}>()
  for await (const e of entries(data)) {
    const h = e.header
    const archivePath = normaliseEntryPath(h.name, archive)
    const type = entryType(h)
    const mode = (h.mode ?? 0o644) & 0o7777
    if (!archivePath) {
      e.skip()
      continue
    }
    const path = map(archivePath)
    if (!type) {
      result.skipped.push({path, reason: `${h.type} entries are not supported`})
      e.skip()
      continue
    }
    const info: ExtractEntryInfo = {path, archivePath, type, size: h.size ?? 0}
    const wanted = !opts.filter || opts.filter(info)
    if (type === 'file') {
      if (!wanted && !linkTargets.has(archivePath)) {
        e.skip()
        continue
      }
      const body = await e.body()
      if (linkTargets.has(archivePath)) kept.set(archivePath, {data: body, mode})
      if (!wanted) continue
      sink.addFile(path, body, {mode, source: opts.source})
      result.files.push({path, size: body.length, mode})
      result.bytes += body.length
      continue
    }
    e.skip()
    if (!wanted) continue
    if (type === 'directory') {
      sink.addDir(path, mode)
      result.dirs.push(path)
    } else if (type === 'symlink') {
      const target = h.linkname ?? ''
      if (!target || target.includes('\0')) throw new TarTraversalError(h.name, archive, 'is a symlink with an empty or invalid target')
      if (usrMerge) {
        // where the link points once /bin etc. are merged into /usr; drop links that point at themselves
        const abs = posix.normalize(target.startsWith('/') ? target : posix.join('/', posix.dirname(archivePath), target))
        const resolved = usrMergePath(abs.replace(/^\/+/, ''))
        if (resolved === path) {
          result.skipped.push({path, reason: `symlink to ${target} points at itself after usr-merge`})
          continue
        }
      }
      sink.addSymlink(path, target, {source: opts.source})
      result.symlinks.push({path, target})
    } else {
      const targetArchive = normaliseEntryPath(h.linkname ?? '', archive)
      const src = kept.get(targetArchive)
      if (!src) throw new TarTraversalError(h.name, archive, `is a hard link to ${JSON.stringify(h.linkname)}, which is not an earlier regular file`)
      sink.addFile(path, src.data, {mode: src.mode, source: opts.source})
      result.hardlinks.push({path, target: map(targetArchive)})
      result.files.push({path, size: src.data.length, mode: src.mode})
      result.bytes += src.data.length
    }
  }
  return result
}

/** The data archive of a .deb as an uncompressed tar (`dpkg-deb --fsys-tarfile`). */
export async function debDataTar(debPath: string): Promise<Buffer> {
  return (await runBuffer('dpkg-deb', ['--fsys-tarfile', debPath])).stdout
}

/** Extract a .deb's files into `sink` (no maintainer scripts; see extractTar). */
export async function extractDeb(debPath: string, sink: TreeSink, opts: ExtractOptions = {}): Promise<ExtractResult> {
  return extractTar(await debDataTar(debPath), sink, {archiveName: debPath, ...opts})
}

/** List a .deb's data archive (final paths after usr-merge) without writing anything. */
export async function listDeb(debPath: string, opts: {usrMerge?: boolean} = {}): Promise<ExtractEntryInfo[]> {
  const out: ExtractEntryInfo[] = []
  const usrMerge = opts.usrMerge ?? true
  for await (const e of entries(await debDataTar(debPath))) {
    const archivePath = normaliseEntryPath(e.header.name, debPath)
    const type = entryType(e.header)
    e.skip()
    if (!archivePath || !type) continue
    out.push({path: usrMerge ? usrMergePath(archivePath) : archivePath, archivePath, type, size: e.header.size ?? 0})
  }
  return out
}

/**
 * Move a finished temp tree into place. If another process published the same (content-addressed)
 * tree meanwhile, theirs is kept, untouched, since a reader may be using it; a leftover without its
 * completion marker is replaced.
 */
async function publishDir(tmp: string, dir: string, marker: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await rename(tmp, dir)
      return
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err
      if (
        await stat(join(dir, marker)).then(
          () => true,
          () => false,
        )
      )
        return
      await rm(dir, {recursive: true, force: true})
    }
  }
  await rename(tmp, dir)
}

/**
 * Unpack a (verified) .deb once into `<cacheDir>/unpacked/<sha256>-<tag>` and return that directory.
 * The tree is written to a temp directory and renamed into place with a completion marker, so an
 * interrupted unpack is never reused. `tag` names the filter (different filters, different trees).
 */
export async function unpackDebCached(
  debPath: string,
  sha256: string,
  cacheDir: string,
  opts: {tag: string; filter?: ExtractOptions['filter']; usrMerge?: boolean; source?: string},
): Promise<{dir: string; hit: boolean}> {
  const dir = join(cacheDir, 'unpacked', `${sha256}-${opts.tag}`)
  try {
    await stat(join(dir, '.rdk-complete'))
    return {dir, hit: true}
  } catch {
    // not there yet
  }
  await mkdir(join(cacheDir, 'unpacked'), {recursive: true})
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`
  try {
    const sink = new DirSink(tmp)
    if (opts.usrMerge ?? true) addUsrMergeLinks(sink)
    await extractDeb(debPath, sink, {filter: opts.filter, usrMerge: opts.usrMerge, source: opts.source})
    await writeFile(join(tmp, '.rdk-complete'), `${sha256}\n`)
    await publishDir(tmp, dir, '.rdk-complete')
  } finally {
    await rm(tmp, {recursive: true, force: true})
  }
  return {dir, hit: false}
}

/** What stagePackagesCached() returns. */
export interface StagedPackages {
  /** The merged tree (read-only: it may be shared by other builds). */
  dir: string
  /** Image path → package that wrote it last (files, symlinks and directories). */
  owners: Map<string, string>
  /** Conflicts: paths written by more than one package (the later one in `packages` order wins). */
  overwritten: {path: string; packages: string[]}[]
  hit: boolean
}

/**
 * Unpack several .debs (in order) into one usr-merged tree without docs, cached under
 * `<cacheDir>/staging/<sha256 of the package hashes>` with its ownership map, so the same package
 * set is never unpacked twice.
 */
export async function stagePackagesCached(packages: readonly {name: string; sha256: string; deb: string}[], cacheDir: string): Promise<StagedPackages> {
  const key = createHash('sha256')
    .update(`v1 nodocs usrmerge\n${packages.map((p) => `${p.name} ${p.sha256}`).join('\n')}`)
    .digest('hex')
  const dir = join(cacheDir, 'staging', key)
  const meta = join(dir, '.rdk-owners.json')
  try {
    const m = JSON.parse(await readFile(meta, 'utf8')) as {owners: Record<string, string>; overwritten: StagedPackages['overwritten']}
    return {dir, owners: new Map(Object.entries(m.owners)), overwritten: m.overwritten, hit: true}
  } catch {
    // build it
  }
  await mkdir(join(cacheDir, 'staging'), {recursive: true})
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`
  try {
    const sink = new DirSink(tmp)
    addUsrMergeLinks(sink)
    const writers = new Map<string, string[]>()
    for (const p of packages) {
      const r = await extractDeb(p.deb, sink, {filter: noDocs, source: p.name})
      for (const f of [...r.files.map((x) => x.path), ...r.symlinks.map((x) => x.path)]) {
        const list = writers.get(f) ?? []
        if (!list.includes(p.name)) list.push(p.name)
        writers.set(f, list)
      }
    }
    const owners: Record<string, string> = {}
    for (const [path, src] of sink.sources) if (src) owners[path] = src
    const overwritten = [...writers].filter(([, w]) => w.length > 1).map(([path, w]) => ({path, packages: w}))
    await writeFile(join(tmp, '.rdk-owners.json'), JSON.stringify({owners, overwritten}))
    await publishDir(tmp, dir, '.rdk-owners.json')
    return {dir, owners: new Map(Object.entries(owners)), overwritten, hit: false}
  } finally {
    await rm(tmp, {recursive: true, force: true})
  }
}
