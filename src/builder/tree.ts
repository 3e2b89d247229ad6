/**
 * The image's file tree, in memory and content-addressed.
 *
 * Entries are keyed by normalised absolute path ("/etc/passwd"). File content lives in a BlobStore
 * under its sha256: either as a Buffer, or as a reference to a host file that was hashed when it was
 * added (extracted packages, element files) and is streamed only when the tree is packed. Every entry
 * remembers its `source` (the element, package or stage that added it) for the size report.
 *
 * Paths are resolved like a filesystem would: adding /bin/sh when /bin is a symlink to usr/bin
 * stores /usr/bin/sh (merged-/usr images need this). `..`, NUL and escapes are rejected.
 */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {lstat, readFile, readdir, readlink} from 'node:fs/promises'
import {join} from 'node:path'
import type {Readable} from 'node:stream'
import {BuildError} from './errors.js'

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'hardlink'

export interface TreeEntry {
  /** Normalised absolute path. */
  readonly path: string
  readonly type: EntryType
  /** Permission bits (07777); the type bits are implied by `type`. */
  readonly mode: number
  readonly uid: number
  readonly gid: number
  /** Symbolic owner ("user" or "user:group") resolved against the image's /etc/passwd when packed. */
  readonly owner?: string
  /** sha256 of the content (files). */
  readonly hash?: string
  /** Content size in bytes (files); target length (symlinks); 0 otherwise. */
  readonly size: number
  /** Symlink target, or the path a hard link points at. */
  readonly target?: string
  readonly major?: number
  readonly minor?: number
  /** Who added it: an element name, `package:<name>`, `spec`, a stage name… */
  readonly source: string
  /** A directory created only because something was added under it (never overrides a real one). */
  readonly implicit?: boolean
}

export interface AddOptions {
  mode?: number
  /** `root`, `0`, `0:0`, `uid:gid`, or a user[:group] name resolved from the image's /etc/passwd. */
  owner?: string
  /** Overrides the tree's current source label for this entry. */
  source?: string
}

export class TreeError extends BuildError {
  constructor(message: string) {
    super(message)
    this.name = 'TreeError'
  }
}

/** Normalise an image path: absolute, no `.`/empty components, no `..`, no NUL. */
export function normalisePath(p: string): string {
  if (typeof p !== 'string' || p.length === 0) throw new TreeError(`invalid image path ${JSON.stringify(p)}: empty`)
  if (p.includes('\0')) throw new TreeError(`invalid image path ${JSON.stringify(p)}: contains NUL`)
  const parts: string[] = []
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') throw new TreeError(`invalid image path ${JSON.stringify(p)}: '..' is not allowed`)
    parts.push(part)
  }
  return `/${parts.join('/')}`
}

/**
 * Sort key giving component-wise byte order: the path's UTF-8 bytes as a latin1 string (one code
 * unit per byte, so `<` compares bytes) with '/' turned into NUL, which sorts before any byte a
 * name can hold. Parents come before children and a directory's contents stay together.
 */
export function pathSortKey(p: string): string {
  return Buffer.from(p.replaceAll('/', '\0'), 'utf8').toString('latin1')
}

export function comparePaths(a: string, b: string): number {
  const ka = pathSortKey(a)
  const kb = pathSortKey(b)
  return ka < kb ? -1 : ka > kb ? 1 : 0
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/')
  return i <= 0 ? '/' : p.slice(0, i)
}

function baseOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1)
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Files up to this size are read in one go (a stream per small file costs more than the read). */
export const SMALL_FILE = 1 << 20

export async function sha256File(path: string, knownSize?: number): Promise<{hash: string; size: number}> {
  if (knownSize !== undefined && knownSize <= SMALL_FILE) {
    const data = await readFile(path)
    return {hash: sha256(data), size: data.length}
  }
  const h = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(path, {highWaterMark: 1 << 20})) {
    h.update(chunk as Buffer)
    size += (chunk as Buffer).length
  }
  return {hash: h.digest('hex'), size}
}

type Blob = {kind: 'buffer'; data: Buffer} | {kind: 'host'; path: string; size: number}

/** Content by sha256: Buffers in memory, or host files referenced by path. */
export class BlobStore {
  private readonly blobs = new Map<string, Blob>()

  putBuffer(data: Buffer): string {
    const hash = sha256(data)
    if (!this.blobs.has(hash)) this.blobs.set(hash, {kind: 'buffer', data})
    return hash
  }

  async putHostFile(path: string, knownSize?: number): Promise<{hash: string; size: number}> {
    const {hash, size} = await sha256File(path, knownSize)
    if (!this.blobs.has(hash)) this.blobs.set(hash, {kind: 'host', path, size})
    return {hash, size}
  }

  /** Register a host file whose hash is already known (e.g. a blob in the cache). */
  putKnownHostFile(hash: string, path: string, size: number): void {
    if (!this.blobs.has(hash)) this.blobs.set(hash, {kind: 'host', path, size})
  }

  has(hash: string): boolean {
    return this.blobs.has(hash)
  }

  size(hash: string): number {
    const b = this.need(hash)
    return b.kind === 'buffer' ? b.data.length : b.size
  }

  /** The host file holding this blob, if it is one. */
  hostPath(hash: string): string | undefined {
    const b = this.blobs.get(hash)
    return b?.kind === 'host' ? b.path : undefined
  }

  /** In-memory content, if the blob is a Buffer. */
  buffer(hash: string): Buffer | undefined {
    const b = this.blobs.get(hash)
    return b?.kind === 'buffer' ? b.data : undefined
  }

  async read(hash: string): Promise<Buffer> {
    const b = this.need(hash)
    return b.kind === 'buffer' ? b.data : readFile(b.path)
  }

  stream(hash: string): Readable | Buffer {
    const b = this.need(hash)
    return b.kind === 'buffer' ? b.data : createReadStream(b.path, {highWaterMark: 1 << 20})
  }

  private need(hash: string): Blob {
    const b = this.blobs.get(hash)
    if (!b) throw new TreeError(`blob ${hash} is not in the store`)
    return b
  }
}

const ROOT: TreeEntry = {path: '/', type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, source: 'tree'}

function parseOwner(owner: string | undefined, path: string): {uid: number; gid: number; owner?: string} {
  if (owner === undefined || owner === 'root' || owner === 'root:root') return {uid: 0, gid: 0}
  const m = /^(\d+)(?::(\d+))?$/.exec(owner)
  if (m) {
    const uid = Number(m[1])
    return {uid, gid: m[2] !== undefined ? Number(m[2]) : uid}
  }
  if (!/^[a-z_][a-z0-9_.-]*\$?(?::[a-z_][a-z0-9_.-]*\$?)?$/i.test(owner))
    throw new TreeError(`${path}: invalid owner '${owner}' (use user, user:group or uid:gid)`)
  return {uid: 0, gid: 0, owner}
}

/** The in-memory image tree. */
/** What a tree digest hashes of one entry: everything that reaches the archive, content by hash. */
export function entryDigestLine(e: TreeEntry): string {
  return `${[e.path, e.type, e.mode.toString(8), e.uid, e.gid, e.owner ?? '', e.hash ?? '', e.target ?? '', e.major ?? '', e.minor ?? ''].join('\0')}\n`
}

export class FileTree {
  readonly blobs: BlobStore
  private readonly map = new Map<string, TreeEntry>([['/', ROOT]])
  /** entries() result, until the tree changes. */
  private sorted: TreeEntry[] | undefined

  private setEntry(path: string, e: TreeEntry): void {
    this.sorted = undefined
    this.map.set(path, e)
  }

  private deleteEntry(path: string): boolean {
    this.sorted = undefined
    return this.map.delete(path)
  }
  /** Source label for entries added without an explicit `source`. */
  source = 'unknown'

  constructor(blobs: BlobStore = new BlobStore()) {
    this.blobs = blobs
  }

  /** Run `fn` with `source` as the current source label. */
  async withSource<T>(source: string, fn: () => Promise<T> | T): Promise<T> {
    const prev = this.source
    this.source = source
    try {
      return await fn()
    } finally {
      this.source = prev
    }
  }

  /**
   * Resolve symlinks in the parent components of `path` (never the last component), as a
   * filesystem would when creating `path`. Throws if a parent is not a directory.
   */
  resolve(path: string, followLast = false): string {
    let p = normalisePath(path)
    for (let hops = 0; hops < 40; hops++) {
      const parts = p.split('/').filter(Boolean)
      let cur = ''
      let changed = false
      const limit = followLast ? parts.length : parts.length - 1
      for (let i = 0; i < limit; i++) {
        const next = `${cur}/${parts[i]}`
        const e = this.map.get(next)
        if (e?.type === 'symlink') {
          const t = e.target!
          const base = t.startsWith('/') ? t : `${cur}/${t}`
          p = this.normaliseWithin(`${base}/${parts.slice(i + 1).join('/')}`, path)
          changed = true
          break
        }
        cur = next
      }
      if (!changed) return p
    }
    throw new TreeError(`${path}: too many levels of symbolic links`)
  }

  /** Normalise allowing `..` (from symlink targets) but clamped at the root, as the kernel does. */
  private normaliseWithin(p: string, original: string): string {
    if (p.includes('\0')) throw new TreeError(`invalid image path ${JSON.stringify(original)}: contains NUL`)
    const out: string[] = []
    for (const part of p.split('/')) {
      if (part === '' || part === '.') continue
      if (part === '..') out.pop()
      else out.push(part)
    }
    return `/${out.join('/')}`
  }

  private ensureParents(path: string): void {
    const parent = parentOf(path)
    if (parent === '/') return
    const e = this.map.get(parent)
    if (e === undefined) {
      this.ensureParents(parent)
      this.setEntry(parent, {path: parent, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, source: this.source, implicit: true})
    } else if (e.type !== 'dir') {
      throw new TreeError(`cannot add ${path}: ${parent} is a ${e.type}, not a directory`)
    }
  }

  private put(entry: TreeEntry): TreeEntry {
    if (entry.path === '/') throw new TreeError('cannot replace the root directory (use addDir("/", mode) to set its mode)')
    const existing = this.map.get(entry.path)
    if (existing?.type === 'dir' && entry.type !== 'dir' && this.hasChildren(entry.path)) {
      throw new TreeError(`cannot add ${entry.type} ${entry.path}: a non-empty directory is there`)
    }
    this.ensureParents(entry.path)
    this.setEntry(entry.path, entry)
    return entry
  }

  private hasChildren(dir: string): boolean {
    const prefix = `${dir}/`
    for (const k of this.map.keys()) if (k.startsWith(prefix)) return true
    return false
  }

  private base(path: string, opts: AddOptions | undefined, defaultMode: number) {
    const p = this.resolve(path)
    const mode = opts?.mode ?? defaultMode
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new TreeError(`${p}: invalid mode ${mode}`)
    return {path: p, mode, ...parseOwner(opts?.owner, p), source: opts?.source ?? this.source}
  }

  addFile(path: string, data: Buffer | string, opts?: AddOptions): TreeEntry {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
    const b = this.base(path, opts, 0o644)
    const hash = this.blobs.putBuffer(buf)
    return this.put({...b, type: 'file', hash, size: buf.length})
  }

  /** Add a host file (hashed now, read when packed). Mode defaults to the host file's. */
  async addFileFromHost(path: string, hostPath: string, opts?: AddOptions): Promise<void> {
    let st
    try {
      st = await lstat(hostPath)
    } catch (err) {
      throw new TreeError(`cannot add ${path}: ${hostPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    if (!st.isFile()) throw new TreeError(`cannot add ${path}: ${hostPath} is not a regular file`)
    const b = this.base(path, opts, st.mode & 0o7777)
    const {hash, size} = await this.blobs.putHostFile(hostPath, st.size)
    this.put({...b, type: 'file', hash, size})
  }

  /** Add a file whose content is already in the blob store. */
  addBlob(path: string, hash: string, opts?: AddOptions): TreeEntry {
    const b = this.base(path, opts, 0o644)
    return this.put({...b, type: 'file', hash, size: this.blobs.size(hash)})
  }

  addDir(path: string, mode = 0o755, opts?: Omit<AddOptions, 'mode'>): TreeEntry {
    const p = normalisePath(path)
    if (p === '/') {
      const root = {...this.map.get('/')!, mode}
      this.setEntry('/', root)
      return root
    }
    // Re-adding a directory keeps its children and just updates mode/owner/source.
    const b = this.base(p, {...opts, mode}, mode)
    const existing = this.map.get(b.path)
    if (existing?.type === 'symlink') {
      // Like mkdir -p and dpkg: a symlink to a directory stays (merged /usr: /bin → usr/bin).
      const target = this.resolve(b.path, true)
      const t = this.map.get(target)
      if (t?.type === 'dir') return t
      if (t === undefined) return this.put({...b, path: target, type: 'dir', size: 0})
      throw new TreeError(`cannot add directory ${b.path}: it is a symlink to ${t.type} ${target}`)
    }
    return this.put({...b, type: 'dir', size: 0})
  }

  addSymlink(path: string, target: string, opts?: Omit<AddOptions, 'mode'>): TreeEntry {
    if (!target || target.includes('\0')) throw new TreeError(`${path}: invalid symlink target ${JSON.stringify(target)}`)
    const b = this.base(path, {...opts, mode: 0o777}, 0o777)
    return this.put({...b, type: 'symlink', target, size: Buffer.byteLength(target)})
  }

  addDevice(path: string, kind: 'char' | 'block', major: number, minor: number, mode = 0o600, opts?: Omit<AddOptions, 'mode'>): TreeEntry {
    for (const [n, v] of [
      ['major', major],
      ['minor', minor],
    ] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new TreeError(`${path}: invalid device ${n} ${v}`)
    }
    if (kind !== 'char' && kind !== 'block') throw new TreeError(`${path}: device kind must be char or block, got ${String(kind)}`)
    const b = this.base(path, {...opts, mode}, mode)
    return this.put({...b, type: kind, major, minor, size: 0})
  }

  /** A hard link to the regular file at `target` (checked when packed: it must exist then). */
  addHardlink(path: string, target: string, opts?: Omit<AddOptions, 'mode'>): TreeEntry {
    const t = this.resolve(target, true)
    const b = this.base(path, {...opts, mode: 0}, 0)
    if (t === b.path) throw new TreeError(`${path}: a hard link cannot point at itself`)
    return this.put({...b, type: 'hardlink', target: t, size: 0})
  }

  has(path: string): boolean {
    return this.map.has(this.resolve(path))
  }

  get(path: string): TreeEntry | undefined {
    return this.map.get(this.resolve(path))
  }

  /** Content of a file entry (following hard links). */
  async read(path: string): Promise<Buffer> {
    let e = this.get(path)
    if (e?.type === 'hardlink') e = this.map.get(e.target!)
    if (e?.type !== 'file') throw new TreeError(`${path}: not a file in the image`)
    return this.blobs.read(e.hash!)
  }

  /** Remove an entry (a directory with everything under it). Returns whether anything was removed. */
  remove(path: string): boolean {
    const p = this.resolve(path)
    if (p === '/') throw new TreeError('cannot remove the root directory')
    if (!this.deleteEntry(p)) return false
    const prefix = `${p}/`
    for (const k of [...this.map.keys()]) if (k.startsWith(prefix)) this.deleteEntry(k)
    return true
  }

  /** All entries but the root, sorted component-wise (parents before children). */
  entries(): TreeEntry[] {
    if (!this.sorted) {
      const keyed: [string, TreeEntry][] = []
      for (const e of this.map.values()) if (e.path !== '/') keyed.push([pathSortKey(e.path), e])
      keyed.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      this.sorted = keyed.map(([, e]) => e)
    }
    return [...this.sorted]
  }

  /** The root directory entry (its mode is used when extracting). */
  root(): TreeEntry {
    return this.map.get('/')!
  }

  get size(): number {
    return this.map.size - 1
  }

  /** sha256 over the sorted entry list, content hashes included: equal digests ⇒ equal images. */
  digest(): string {
    const h = createHash('sha256')
    h.update('rdk-tree-v1\n')
    for (const e of [this.root(), ...this.entries()]) h.update(entryDigestLine(e))
    return h.digest('hex')
  }

  /** Bytes of file content added by `source`. */
  sizeBy(source: string): number {
    let n = 0
    for (const e of this.map.values()) if (e.source === source && e.type === 'file') n += e.size
    return n
  }

  /** {files, bytes} per source, largest first. */
  sizeBySource(): {source: string; entries: number; files: number; bytes: number}[] {
    const acc = new Map<string, {source: string; entries: number; files: number; bytes: number}>()
    for (const e of this.map.values()) {
      if (e.path === '/') continue
      const a = acc.get(e.source) ?? {source: e.source, entries: 0, files: 0, bytes: 0}
      a.entries++
      if (e.type === 'file') {
        a.files++
        a.bytes += e.size
      }
      acc.set(e.source, a)
    }
    return [...acc.values()].sort((a, b) => b.bytes - a.bytes || (a.source < b.source ? -1 : 1))
  }

  /** Copy every entry of `other` (sharing or copying blobs) into this tree; later wins. */
  merge(other: FileTree): void {
    for (const e of other.entries()) {
      if (e.type === 'file' && !this.blobs.has(e.hash!)) this.copyBlob(other.blobs, e.hash!)
      if (e.type === 'dir' && this.map.get(e.path)?.type === 'dir') {
        if (!e.implicit) this.setEntry(e.path, e)
        continue
      }
      this.put(e)
    }
  }

  private copyBlob(from: BlobStore, hash: string): void {
    const host = from.hostPath(hash)
    if (host) this.blobs.putKnownHostFile(hash, host, from.size(hash))
    else this.blobs.putBuffer(from.buffer(hash)!)
  }

  /** Insert an entry as is (used to restore snapshots); its blob must already be in the store. */
  insert(entry: TreeEntry): void {
    if (entry.type === 'file' && !this.blobs.has(entry.hash!)) throw new TreeError(`${entry.path}: blob ${entry.hash} is not in the store`)
    if (entry.path === '/') this.setEntry('/', entry)
    else this.put({...entry, path: normalisePath(entry.path)})
  }

  /**
   * Import a host directory under `at` (files hashed, symlinks kept as is, modes from the host;
   * owner root). Sockets and FIFOs are skipped; device nodes are imported.
   */
  async importDirectory(hostDir: string, at = '/', opts: {source?: string} = {}): Promise<number> {
    let count = 0
    const walk = async (dir: string, imagePath: string): Promise<void> => {
      const names = (await readdir(dir)).sort()
      for (const name of names) {
        const host = join(dir, name)
        const ip = imagePath === '/' ? `/${name}` : `${imagePath}/${name}`
        const st = await lstat(host)
        const o = {source: opts.source}
        if (st.isDirectory()) {
          this.addDir(ip, st.mode & 0o7777, o)
          await walk(host, ip)
        } else if (st.isFile()) {
          await this.addFileFromHost(ip, host, {...o, mode: st.mode & 0o7777})
        } else if (st.isSymbolicLink()) {
          this.addSymlink(ip, await readlink(host), o)
        } else if (st.isCharacterDevice() || st.isBlockDevice()) {
          const rdev = st.rdev
          this.addDevice(
            ip,
            st.isCharacterDevice() ? 'char' : 'block',
            Math.floor(rdev / 256) & 0xfff,
            (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
            st.mode & 0o7777,
            o,
          )
        } else {
          continue
        }
        count++
      }
    }
    await walk(hostDir, normalisePath(at))
    return count
  }
}

export {parentOf, baseOf}
