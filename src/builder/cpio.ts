/**
 * Deterministic newc ("070701") cpio writer, streaming a FileTree as the kernel's initramfs
 * unpacker (init/initramfs.c) and GNU cpio read it:
 *
 * - entries in the tree's sorted order (parents before children), the root itself left out;
 * - uid/gid from the tree (0 unless an owner was given), mtime = SOURCE_DATE_EPOCH for every entry;
 * - inode numbers 1, 2, 3… in that order; hard links share their file's inode, carry nlink, and the
 *   data goes with the last link (what GNU cpio writes and both readers accept);
 * - directories' nlink = 2 + subdirectories; device nodes in rdevmajor/rdevminor;
 * - header+name and data padded to 4 bytes; `TRAILER!!!` at the end.
 */
import {createWriteStream} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {Readable, type Writable} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {BuildError} from './errors.js'
import {SMALL_FILE, type FileTree, type TreeEntry} from './tree.js'

export const CPIO_FORMAT = 'newc-v1'

const TYPE_BITS: Record<TreeEntry['type'], number> = {
  file: 0o100000,
  hardlink: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
}

export interface CpioOptions {
  /** mtime of every entry (seconds since the epoch): the build's SOURCE_DATE_EPOCH. */
  mtime: number
  /**
   * Write only the entries this selects (one layer of a layered initramfs). Owners are still resolved
   * against the whole tree; a hard link must be in the same selection as its file.
   */
  include?: (e: TreeEntry) => boolean
  /**
   * First inode number (default 1). The kernel matches hard links by inode across every archive of a
   * concatenated initramfs, so the layers of one image take disjoint ranges.
   */
  firstIno?: number
}

export interface CpioStats {
  bytes: number
  entries: number
}

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new BuildError(`cpio: value ${n} does not fit a newc header field`)
  return n.toString(16).padStart(8, '0')
}

const PAD = Buffer.alloc(4)
const pad4 = (n: number) => (4 - (n % 4)) % 4

interface HeaderFields {
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  mtime: number
  filesize: number
  rdevmajor: number
  rdevminor: number
  name: string
}

function header(f: HeaderFields): Buffer {
  const name = Buffer.from(`${f.name}\0`, 'utf8')
  const head =
    '070701' +
    hex8(f.ino) +
    hex8(f.mode) +
    hex8(f.uid) +
    hex8(f.gid) +
    hex8(f.nlink) +
    hex8(f.mtime) +
    hex8(f.filesize) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(f.rdevmajor) +
    hex8(f.rdevminor) +
    hex8(name.length) +
    hex8(0) // check
  const total = 110 + name.length
  return Buffer.concat([Buffer.from(head, 'latin1'), name, PAD.subarray(0, pad4(total))])
}

/** Map symbolic owners ("user[:group]") to ids using the image's own /etc/passwd and /etc/group. */
export async function resolveOwners(tree: FileTree): Promise<Map<string, {uid: number; gid: number}>> {
  const wanted = new Set<string>()
  for (const e of tree.entries()) if (e.owner) wanted.add(e.owner)
  const out = new Map<string, {uid: number; gid: number}>()
  if (wanted.size === 0) return out
  const table = async (file: string) => {
    const m = new Map<string, {id: number; gid: number}>()
    if (!tree.has(file)) return m
    for (const line of (await tree.read(file)).toString('utf8').split('\n')) {
      const f = line.split(':')
      if (f.length >= 3 && /^\d+$/.test(f[2]!)) m.set(f[0]!, {id: Number(f[2]), gid: /^\d+$/.test(f[3] ?? '') ? Number(f[3]) : Number(f[2])})
    }
    return m
  }
  const users = await table('/etc/passwd')
  const groups = await table('/etc/group')
  for (const owner of wanted) {
    const [user, group] = owner.split(':') as [string, string | undefined]
    const u = /^\d+$/.test(user) ? {id: Number(user), gid: Number(user)} : users.get(user)
    if (!u) throw new BuildError(`owner '${owner}': no user '${user}' in the image's /etc/passwd`)
    let gid = u.gid
    if (group !== undefined) {
      const g = /^\d+$/.test(group) ? {id: Number(group)} : groups.get(group)
      if (!g) throw new BuildError(`owner '${owner}': no group '${group}' in the image's /etc/group`)
      gid = g.id
    }
    out.set(owner, {uid: u.id, gid})
  }
  return out
}

/** The archive as a stream of Buffers (about 256 KiB each; big files pass through in 1 MiB chunks). */
export async function* cpioChunks(tree: FileTree, opts: CpioOptions, stats: CpioStats = {bytes: 0, entries: 0}): AsyncGenerator<Buffer> {
  const entries = opts.include ? tree.entries().filter(opts.include) : tree.entries()
  const owners = await resolveOwners(tree)
  const index = new Map<string, number>()
  for (const [i, e] of entries.entries()) index.set(e.path, i)

  // Inodes in archive order; hard links take their file's.
  const ino = new Array<number>(entries.length)
  let next = opts.firstIno ?? 1
  entries.forEach((e, i) => {
    if (e.type !== 'hardlink') ino[i] = next++
  })
  const subdirs = new Map<string, number>()
  for (const e of entries) {
    if (e.type !== 'dir') continue
    const parent = e.path.slice(0, e.path.lastIndexOf('/')) || '/'
    subdirs.set(parent, (subdirs.get(parent) ?? 0) + 1)
  }
  // Hard link groups: file index → member indices (file included), data on the last member.
  const linkTarget = new Map<number, number>()
  const groups = new Map<number, number[]>()
  entries.forEach((e, i) => {
    if (e.type !== 'hardlink') return
    let t = index.get(e.target!)
    for (let hops = 0; t !== undefined && entries[t]!.type === 'hardlink' && hops < 40; hops++) t = index.get(entries[t]!.target!)
    if (t === undefined || entries[t]!.type !== 'file')
      throw new BuildError(`hard link ${e.path}: target ${e.target} is not a regular file in the image${opts.include ? ' (in the same initramfs layer)' : ''}`)
    linkTarget.set(i, t)
    ino[i] = ino[t]!
    const g = groups.get(t) ?? [t]
    g.push(i)
    groups.set(t, g)
  })
  const dataCarrier = new Map<number, number>() // file index → index of the member carrying data
  for (const [t, members] of groups) dataCarrier.set(t, Math.max(...members))

  let pending: Buffer[] = []
  let pendingBytes = 0
  const push = (b: Buffer) => {
    pending.push(b)
    pendingBytes += b.length
    stats.bytes += b.length
  }
  const flush = () => {
    const out = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes)
    pending = []
    pendingBytes = 0
    return out
  }

  // Read small host files ahead (a few at a time) so the disk is busy while we write.
  const dataIndex = (i: number): number | undefined => {
    const e = entries[i]!
    if (e.type === 'file') return i
    if (e.type === 'hardlink') return linkTarget.get(i)
    return undefined
  }
  const ahead = new Map<number, Promise<Buffer>>()
  let aheadUpTo = 0
  const prefetch = (from: number) => {
    let bytes = 0
    for (const p of ahead.keys()) bytes += entries[p]!.size
    for (aheadUpTo = Math.max(aheadUpTo, from); aheadUpTo < entries.length && ahead.size < 64 && bytes < 32 * SMALL_FILE; aheadUpTo++) {
      const fi = dataIndex(aheadUpTo)
      if (fi === undefined) continue
      const f = entries[fi]!
      const host = tree.blobs.hostPath(f.hash!)
      if (!host || f.size > SMALL_FILE || f.size === 0 || ahead.has(aheadUpTo)) continue
      const p = readFile(host)
      p.catch(() => undefined) // reported when awaited
      ahead.set(aheadUpTo, p)
      bytes += f.size
    }
  }

  for (let i = 0; i < entries.length; i++) {
    prefetch(i)
    const e = entries[i]!
    const fileIdx = e.type === 'hardlink' ? linkTarget.get(i)! : i
    const file = entries[fileIdx]!
    const group = groups.get(fileIdx)
    const carriesData = e.type === 'file' || e.type === 'hardlink' ? (group ? dataCarrier.get(fileIdx) === i : true) : false
    const owner = e.owner ? owners.get(e.owner)! : {uid: e.uid, gid: e.gid}
    const perm = e.type === 'hardlink' ? file.mode : e.mode
    let filesize = 0
    if (e.type === 'symlink') filesize = Buffer.byteLength(e.target!)
    else if (carriesData) filesize = file.size
    push(
      header({
        ino: ino[i]!,
        mode: TYPE_BITS[e.type] | perm,
        uid: owner.uid,
        gid: owner.gid,
        nlink: e.type === 'dir' ? 2 + (subdirs.get(e.path) ?? 0) : group ? group.length : 1,
        mtime: opts.mtime,
        filesize,
        rdevmajor: e.major ?? 0,
        rdevminor: e.minor ?? 0,
        name: e.path.slice(1),
      }),
    )
    stats.entries++
    if (e.type === 'symlink') {
      push(Buffer.from(e.target!, 'utf8'))
    } else if (filesize > 0) {
      const pre = ahead.get(i)
      ahead.delete(i)
      const content = pre ? await pre : tree.blobs.stream(file.hash!)
      if (Buffer.isBuffer(content)) {
        if (content.length !== filesize)
          throw new BuildError(
            `${e.path}: its content changed while packing (${tree.blobs.hostPath(file.hash!)}: expected ${filesize} bytes, read ${content.length})`,
          )
        push(content)
      } else {
        if (pendingBytes > 0) yield flush()
        let n = 0
        for await (const chunk of content) {
          n += (chunk as Buffer).length
          stats.bytes += (chunk as Buffer).length
          yield chunk as Buffer
        }
        if (n !== filesize)
          throw new BuildError(`${e.path}: its content changed while packing (${tree.blobs.hostPath(file.hash!)}: expected ${filesize} bytes, read ${n})`)
      }
    } else {
      if (pendingBytes >= 256 * 1024) yield flush()
      continue
    }
    const p = pad4(filesize)
    if (p) push(PAD.subarray(0, p))
    if (pendingBytes >= 256 * 1024) yield flush()
  }
  push(header({ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, filesize: 0, rdevmajor: 0, rdevminor: 0, name: 'TRAILER!!!'}))
  yield flush()
}

/** Write the tree as a newc archive to `dest` (a file path or a stream). */
export async function writeCpio(tree: FileTree, dest: string | Writable, opts: CpioOptions): Promise<CpioStats> {
  const stats: CpioStats = {bytes: 0, entries: 0}
  const out = typeof dest === 'string' ? createWriteStream(dest, {mode: 0o644}) : dest
  await pipeline(Readable.from(cpioChunks(tree, opts, stats), {objectMode: false}), out)
  return stats
}

export interface CpioEntry {
  name: string
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  mtime: number
  rdevmajor: number
  rdevminor: number
  data: Buffer
}

/**
 * Parse a newc archive (for tests and inspection). Like the kernel, it reads on after TRAILER!!!
 * (skipping zero padding) when another archive follows: a layered initramfs, once decompressed, is
 * a concatenation of archives.
 */
export function parseCpio(buf: Buffer): CpioEntry[] {
  const out: CpioEntry[] = []
  let off = 0
  for (;;) {
    if (off + 110 > buf.length) throw new BuildError(`cpio: truncated header at offset ${off}`)
    const magic = buf.toString('latin1', off, off + 6)
    if (magic !== '070701') throw new BuildError(`cpio: bad magic ${JSON.stringify(magic)} at offset ${off}`)
    const start = off
    const field = (i: number) => parseInt(buf.toString('latin1', start + 6 + i * 8, start + 14 + i * 8), 16)
    const namesize = field(11)
    const filesize = field(6)
    const name = buf.toString('utf8', off + 110, off + 110 + namesize - 1)
    off += 110 + namesize
    off += pad4(off)
    if (name === 'TRAILER!!!') {
      while (off < buf.length && buf[off] === 0) off++
      if (off >= buf.length) return out
      continue
    }
    const data = buf.subarray(off, off + filesize)
    off += filesize
    off += pad4(off)
    out.push({
      name,
      ino: field(0),
      mode: field(1),
      uid: field(2),
      gid: field(3),
      nlink: field(4),
      mtime: field(5),
      rdevmajor: field(9),
      rdevminor: field(10),
      data,
    })
  }
}
