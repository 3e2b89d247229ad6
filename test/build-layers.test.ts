/**
 * The layered initramfs (src/builder/layers.ts): which entry goes to which layer, digests that change
 * only with their layer's content, disjoint inode ranges, and archives that together hold the tree.
 */
import {describe, expect, it} from 'vitest'
import {parseCpio, writeCpio} from '../src/builder/cpio.js'
import {DEFAULT_LAYER, DIRS_LAYER, LAYER_INO_STRIDE, planLayers} from '../src/builder/layers.js'
import {FileTree} from '../src/builder/tree.js'
import {PassThrough} from 'node:stream'

const ELF_EXEC = (() => {
  const b = Buffer.alloc(4096, 0x90)
  b.writeUInt32BE(0x7f454c46, 0)
  b.writeUInt16LE(3, 16) // ET_DYN
  b.writeUInt16LE(62, 18) // x86-64
  return b
})()

function sample(payload = 'payload v1\n'): FileTree {
  const t = new FileTree()
  t.addDir('/tmp', 0o1777)
  t.addFile('/usr/lib/modules/k/a.ko', 'module\n', {source: 'kernel'})
  t.addFile('/usr/bin/tool', ELF_EXEC, {source: 'pkg-a', mode: 0o755})
  t.addSymlink('/usr/bin/tool2', 'tool', {source: 'pkg-a'})
  t.addHardlink('/usr/bin/tool-hard', '/usr/bin/tool', {source: 'element-x'})
  t.addFile('/etc/element.conf', payload, {source: 'element-x'})
  t.addFile('/etc/other', 'other\n', {source: 'spec'})
  return t
}

const layerOf = new Map([
  ['pkg-a', 'toolset'],
  ['kernel', 'modules'],
])

async function cpioBytes(tree: FileTree, opts: Parameters<typeof writeCpio>[2]): Promise<Buffer> {
  const chunks: Buffer[] = []
  const s = new PassThrough()
  s.on('data', (c: Buffer) => chunks.push(c))
  await writeCpio(tree, s, opts)
  return Buffer.concat(chunks)
}

describe('initramfs layers', () => {
  it('puts every directory first, named layers in registration order, everything else last', () => {
    const layers = planLayers(sample(), layerOf)
    expect(layers.map((l) => l.name)).toEqual([DIRS_LAYER, 'toolset', 'modules', DEFAULT_LAYER])
    const t = sample()
    const where = (p: string) => layers.find((l) => l.include(t.get(p)!))!.name
    expect(where('/tmp')).toBe(DIRS_LAYER)
    expect(where('/usr/lib/modules/k')).toBe(DIRS_LAYER)
    expect(where('/usr/bin/tool2')).toBe('toolset')
    expect(where('/usr/bin/tool-hard')).toBe('toolset') // a hard link goes with its file
    expect(where('/etc/element.conf')).toBe(DEFAULT_LAYER)
    expect(layers.map((l) => l.firstIno)).toEqual([1, LAYER_INO_STRIDE + 1, 2 * LAYER_INO_STRIDE + 1, 3 * LAYER_INO_STRIDE + 1])
    expect(layers.find((l) => l.name === 'toolset')!.x86Bytes).toBe(ELF_EXEC.length)
    expect(layers.find((l) => l.name === DEFAULT_LAYER)!.x86Bytes).toBe(0)
  })

  it('changes only the digest of the layer whose content changed', () => {
    const a = planLayers(sample(), layerOf)
    const b = planLayers(sample('payload v2\n'), layerOf)
    expect(a.map((l) => l.name)).toEqual(b.map((l) => l.name))
    for (const [i, l] of a.entries()) {
      if (l.name === DEFAULT_LAYER) expect(b[i]!.digest).not.toBe(l.digest)
      else expect(b[i]!.digest).toBe(l.digest)
    }
  })

  it('writes archives that, concatenated, hold every entry once, with disjoint inode ranges', async () => {
    const tree = sample()
    const layers = planLayers(tree, layerOf)
    const parts = await Promise.all(layers.map((l) => cpioBytes(tree, {mtime: 7, include: l.include, firstIno: l.firstIno})))
    for (const p of parts) expect(p.length % 4).toBe(0)
    const entries = parseCpio(Buffer.concat(parts))
    expect(entries.map((e) => `/${e.name}`).sort()).toEqual(
      tree
        .entries()
        .map((e) => e.path)
        .sort(),
    )
    const tool = entries.find((e) => e.name === 'usr/bin/tool')!
    const hard = entries.find((e) => e.name === 'usr/bin/tool-hard')!
    expect(hard.ino).toBe(tool.ino)
    expect(tool.nlink).toBe(2)
    expect(tool.ino).toBeGreaterThan(LAYER_INO_STRIDE)
    const inos = entries.filter((e) => e !== hard).map((e) => e.ino)
    expect(new Set(inos).size).toBe(inos.length)
    expect(entries.find((e) => e.name === 'tmp')!.mode & 0o7777).toBe(0o1777)
    // Concatenated archives read like one tree; each archive stands alone too.
    expect(parseCpio(parts[0]!).every((e) => (e.mode & 0o170000) === 0o040000)).toBe(true)
  })
})
