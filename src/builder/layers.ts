/**
 * The layered initramfs: the tree is written as several newc archives, each compressed on its own
 * and concatenated — the kernel unpacks a concatenation of (compressed) cpio archives in order, as
 * it does for early-microcode images. Layers follow the tree's sources (ctx.layers: source → layer):
 * the tiny flavor puts kernel modules, Node and the Debian toolset in layers of their own, so editing
 * one element recompresses a few kilobytes, not 150 MB, and every unchanged layer comes from the cache
 * by its digest.
 *
 * Rules that keep the result identical to one big archive once unpacked:
 * - every directory goes into the first layer (`dirs`): a directory written again by a later layer
 *   would be chmod'ed again, and an archive cannot create a file whose parent does not exist yet;
 * - a hard link goes with the file it links to;
 * - layer N numbers its inodes from N·2^24 + 1, because the kernel matches hard links by inode
 *   across the whole concatenation;
 * - no padding between layers: an uncompressed newc archive is a multiple of 4 bytes long, and a
 *   compressed one may start anywhere (gzip, xz and zstd on the host read concatenations too).
 */
import {createHash} from 'node:crypto'
import {closeSync, openSync, readSync} from 'node:fs'
import {entryDigestLine, type FileTree, type TreeEntry} from './tree.js'

/** Is the blob an x86-64 ELF executable or shared library (what the xz x86 BCJ filter helps)? */
function isX86Code(tree: FileTree, e: TreeEntry): boolean {
  if (e.type !== 'file' || e.size < 64) return false
  let head: Buffer | undefined = tree.blobs.buffer(e.hash!)
  const host = head ? undefined : tree.blobs.hostPath(e.hash!)
  if (host) {
    head = Buffer.alloc(20)
    const fd = openSync(host, 'r')
    try {
      readSync(fd, head, 0, 20, 0)
    } finally {
      closeSync(fd)
    }
  }
  if (!head || head.length < 20 || head.readUInt32BE(0) !== 0x7f454c46) return false
  const type = head.readUInt16LE(16)
  return (type === 2 || type === 3) && head.readUInt16LE(18) === 62
}

export const DIRS_LAYER = 'dirs'
export const DEFAULT_LAYER = 'image'
export const LAYER_INO_STRIDE = 1 << 24

export interface Layer {
  name: string
  /** Position in the concatenation (0 = dirs). */
  index: number
  firstIno: number
  include: (e: TreeEntry) => boolean
  /** sha256 over the layer's entries (what tree.digest() hashes, restricted to the layer). */
  digest: string
  entries: number
  bytes: number
  /** Bytes of the layer's files that are x86-64 executables or shared libraries (ELF ET_EXEC/ET_DYN). */
  x86Bytes: number
}

/** Split `tree` into layers by `layerOf` (source → layer name; others go to `image`). Empty layers are left out. */
export function planLayers(tree: FileTree, layerOf: ReadonlyMap<string, string>): Layer[] {
  const entries = tree.entries()
  const byPath = new Map(entries.map((e) => [e.path, e]))
  const order = [DIRS_LAYER, ...new Set([...layerOf.values()].filter((l) => l !== DIRS_LAYER && l !== DEFAULT_LAYER)), DEFAULT_LAYER]
  const layerName = (e: TreeEntry): string => {
    if (e.type === 'dir') return DIRS_LAYER
    if (e.type === 'hardlink') {
      let t = byPath.get(e.target!)
      for (let hops = 0; t?.type === 'hardlink' && hops < 40; hops++) t = byPath.get(t.target!)
      if (t) return layerName(t)
    }
    return layerOf.get(e.source) ?? DEFAULT_LAYER
  }
  const assigned = new Map<string, string>()
  const stats = new Map(order.map((n) => [n, {hash: createHash('sha256').update(`rdk-layer-v1\n${n}\n`), entries: 0, bytes: 0, x86Bytes: 0}]))
  for (const e of entries) {
    const name = layerName(e)
    assigned.set(e.path, name)
    const s = stats.get(name)!
    s.entries++
    s.bytes += e.type === 'file' ? e.size : 0
    if (isX86Code(tree, e)) s.x86Bytes += e.size
    s.hash.update(entryDigestLine(e))
  }
  const out: Layer[] = []
  for (const name of order) {
    const s = stats.get(name)!
    if (s.entries === 0) continue
    const index = out.length
    out.push({
      name,
      index,
      firstIno: index * LAYER_INO_STRIDE + 1,
      include: (e) => assigned.get(e.path) === name,
      digest: s.hash.digest('hex'),
      entries: s.entries,
      bytes: s.bytes,
      x86Bytes: s.x86Bytes,
    })
  }
  return out
}
