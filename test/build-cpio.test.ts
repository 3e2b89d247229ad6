// The newc writer against GNU cpio (Debian package `cpio`), and the compressors.
import {execFileSync, spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gunzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {compressFile, type Compression} from '../src/builder/compress.js'
import {parseCpio, writeCpio} from '../src/builder/cpio.js'
import {FileTree} from '../src/builder/tree.js'

const EPOCH = 1700000000
const tmp = mkdtempSync(join(tmpdir(), 'rdk-cpio-test-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))
const isRoot = process.getuid?.() === 0
const has = (tool: string) => spawnSync(tool, ['--version']).status === 0

const bigData = randomBytes(3 * 1024 * 1024 + 3) // not a multiple of 4: exercises padding
let hostBig: string

beforeAll(() => {
  hostBig = join(tmp, 'big.bin')
  writeFileSync(hostBig, bigData)
})

async function sampleTree(reverse = false): Promise<FileTree> {
  const t = new FileTree()
  const ops: (() => unknown)[] = [
    () => t.addDir('/etc', 0o755),
    () => t.addDir('/root', 0o700),
    () => t.addDir('/tmp', 0o1777),
    () => t.addFile('/etc/hostname', 'rdk\n'),
    () => t.addFile('/etc/empty', ''),
    () => t.addFile('/etc/odd', 'abcde', {mode: 0o640}),
    () => t.addFile('/usr/bin/busybox', '#!/bin/sh\necho busybox\n', {mode: 0o755}),
    () => t.addFile('/usr/bin/su', 'setuid', {mode: 0o4755}),
    () => t.addHardlink('/usr/bin/sh', '/usr/bin/busybox'),
    () => t.addSymlink('/bin', 'usr/bin'),
    () => t.addSymlink('/etc/mtab', '/proc/self/mounts'),
    () => t.addDevice('/dev/console', 'char', 5, 1, 0o600),
    () => t.addDevice('/dev/loop0', 'block', 7, 0, 0o660),
    () => t.addFile('/usr/share/ünïcødé.txt', 'utf-8 name\n'),
    () => t.addFileFromHost('/usr/lib/big.bin', hostBig, {mode: 0o644}),
  ]
  for (const op of reverse ? [...ops].reverse() : ops) await op()
  return t
}

describe('newc writer', () => {
  it('is byte-identical for the same tree, whatever the insertion order', async () => {
    const a = join(tmp, 'a.cpio')
    const b = join(tmp, 'b.cpio')
    await writeCpio(await sampleTree(), a, {mtime: EPOCH})
    await writeCpio(await sampleTree(true), b, {mtime: EPOCH})
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true)
    const c = join(tmp, 'c.cpio')
    await writeCpio(await sampleTree(), c, {mtime: EPOCH + 1})
    expect(readFileSync(a).equals(readFileSync(c))).toBe(false)
  })

  it('writes headers GNU cpio and the kernel expect: order, inodes, nlink, padding, trailer', async () => {
    const file = join(tmp, 'h.cpio')
    const stats = await writeCpio(await sampleTree(), file, {mtime: EPOCH})
    const buf = readFileSync(file)
    expect(stats.bytes).toBe(buf.length)
    expect(buf.length % 4).toBe(0)
    expect(buf.subarray(buf.length - 124).toString('latin1')).toContain('TRAILER!!!')
    const entries = parseCpio(buf)
    const names = entries.map((e) => e.name)
    expect(names[0]).toBe('bin')
    for (const e of entries) {
      const parent = e.name.includes('/') ? e.name.slice(0, e.name.lastIndexOf('/')) : undefined
      if (parent) expect(names.indexOf(parent)).toBeLessThan(names.indexOf(e.name))
      expect(e.mtime).toBe(EPOCH)
      expect([e.uid, e.gid]).toEqual([0, 0])
    }
    const by = Object.fromEntries(entries.map((e) => [e.name, e]))
    expect(by.usr!.nlink).toBe(5) // 2 + bin, lib, share
    expect(by.tmp!.nlink).toBe(2)
    expect(by.tmp!.mode).toBe(0o41777)
    expect(by['usr/bin/su']!.mode).toBe(0o104755)
    expect(by['dev/console']).toMatchObject({mode: 0o20600, rdevmajor: 5, rdevminor: 1})
    expect(by['dev/loop0']).toMatchObject({mode: 0o60660, rdevmajor: 7, rdevminor: 0})
    expect(by.bin!.data.toString()).toBe('usr/bin')
    // hard link: same inode, nlink 2, data on the last one only
    expect(by['usr/bin/sh']!.ino).toBe(by['usr/bin/busybox']!.ino)
    expect(by['usr/bin/sh']!.nlink).toBe(2)
    expect(by['usr/bin/busybox']!.data.length).toBe(0)
    expect(by['usr/bin/sh']!.data.toString()).toContain('echo busybox')
    // unique, increasing inodes otherwise
    const inos = entries.filter((e) => e.name !== 'usr/bin/sh').map((e) => e.ino)
    expect(new Set(inos).size).toBe(inos.length)
    expect(inos).toEqual([...inos].sort((x, y) => x - y))
    expect(by['usr/lib/big.bin']!.data.equals(bigData)).toBe(true)
  })

  it.skipIf(!has('cpio'))('round-trips through GNU cpio (-t and -idm): names, modes, contents, links, devices', async () => {
    const file = join(tmp, 'gnu.cpio')
    await writeCpio(await sampleTree(), file, {mtime: EPOCH})
    const archive = readFileSync(file)
    const list = execFileSync('cpio', ['-t', '--quiet'], {input: archive}).toString().trim().split('\n')
    expect(list).toEqual(parseCpio(archive).map((e) => e.name))
    const verbose = execFileSync('cpio', ['-tv', '--quiet'], {input: archive}).toString()
    expect(verbose).toMatch(/crw-------\s+1 root\s+root\s+5,\s+1 .* dev\/console/)
    expect(verbose).toMatch(/-rwsr-xr-x\s+1 root\s+root\s+6 .* usr\/bin\/su/)

    const out = join(tmp, 'extract')
    mkdirSync(out)
    const r = spawnSync('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], {cwd: out, input: archive})
    // Not root: cpio cannot mknod, says so and carries on; everything else must be there.
    if (isRoot) expect(r.status, r.stderr.toString()).toBe(0)
    const st = (p: string) => lstatSync(join(out, p))
    expect(st('root').mode & 0o7777).toBe(0o700)
    expect(st('tmp').mode & 0o7777).toBe(0o1777)
    expect(st('etc/odd').mode & 0o7777).toBe(0o640)
    expect(st('usr/bin/busybox').mode & 0o7777).toBe(0o755)
    expect(readFileSync(join(out, 'etc/odd'), 'utf8')).toBe('abcde')
    expect(readFileSync(join(out, 'etc/empty')).length).toBe(0)
    expect(readFileSync(join(out, 'usr/share/ünïcødé.txt'), 'utf8')).toBe('utf-8 name\n')
    expect(
      createHash('sha256')
        .update(readFileSync(join(out, 'usr/lib/big.bin')))
        .digest('hex'),
    ).toBe(createHash('sha256').update(bigData).digest('hex'))
    expect(readlinkSync(join(out, 'bin'))).toBe('usr/bin')
    expect(readlinkSync(join(out, 'etc/mtab'))).toBe('/proc/self/mounts')
    expect(st('usr/bin/sh').ino).toBe(st('usr/bin/busybox').ino)
    expect(st('usr/bin/sh').nlink).toBe(2)
    expect(readFileSync(join(out, 'usr/bin/sh'), 'utf8')).toBe('#!/bin/sh\necho busybox\n')
    expect(Math.floor(st('etc/hostname').mtimeMs / 1000)).toBe(EPOCH)
    if (isRoot) {
      expect(st('usr/bin/su').mode & 0o7777).toBe(0o4755)
      expect(st('dev/console').isCharacterDevice()).toBe(true)
      expect(st('dev/console').rdev).toBe((5 << 8) | 1)
      expect(st('dev/loop0').isBlockDevice()).toBe(true)
      expect(st('dev/loop0').rdev).toBe(7 << 8)
    }
  })

  it("maps symbolic owners through the image's own /etc/passwd and /etc/group", async () => {
    const t = new FileTree()
    t.addFile('/etc/passwd', 'root:x:0:0::/root:/bin/sh\ndnsmasq:x:101:65534::/var/lib/misc:/usr/sbin/nologin\n')
    t.addFile('/etc/group', 'root:x:0:\nadm:x:4:\n')
    t.addDir('/var/lib/misc', 0o755, {owner: 'dnsmasq'})
    t.addFile('/var/log/x', 'x', {owner: 'dnsmasq:adm'})
    const file = join(tmp, 'own.cpio')
    await writeCpio(t, file, {mtime: 0})
    const by = Object.fromEntries(parseCpio(readFileSync(file)).map((e) => [e.name, e]))
    expect([by['var/lib/misc']!.uid, by['var/lib/misc']!.gid]).toEqual([101, 65534])
    expect([by['var/log/x']!.uid, by['var/log/x']!.gid]).toEqual([101, 4])
    t.addFile('/etc/y', 'y', {owner: 'nobody'})
    await expect(writeCpio(t, join(tmp, 'own2.cpio'), {mtime: 0})).rejects.toThrow(/no user 'nobody' in the image's \/etc\/passwd/)
  })

  it('fails clearly when a host file changed size after it was added', async () => {
    const host = join(tmp, 'changing')
    writeFileSync(host, 'short')
    const t = new FileTree()
    await t.addFileFromHost('/x', host)
    writeFileSync(host, 'much longer now')
    await expect(writeCpio(t, join(tmp, 'changed.cpio'), {mtime: 0})).rejects.toThrow(/changed while packing/)
  })
})

describe('compression', () => {
  let input: string
  beforeAll(async () => {
    input = join(tmp, 'in.cpio')
    await writeCpio(await sampleTree(), input, {mtime: EPOCH})
  })

  const kinds: Compression[] = ['gzip', 'xz', 'zstd', 'none']
  for (const kind of kinds) {
    it.skipIf(kind !== 'gzip' && kind !== 'none' && !has(kind))(`${kind}: same input gives the same bytes, and decompresses to the input`, async () => {
      const a = join(tmp, `a.${kind}`)
      const b = join(tmp, `b.${kind}`)
      await compressFile(kind, input, a)
      await compressFile(kind, input, b)
      const bytes = readFileSync(a)
      expect(bytes.equals(readFileSync(b))).toBe(true)
      const original = readFileSync(input)
      let back: Buffer
      if (kind === 'gzip') back = gunzipSync(bytes)
      else if (kind === 'none') back = bytes
      else back = execFileSync(kind, ['-d', '-c'], {input: bytes, maxBuffer: 1 << 28})
      expect(back.equals(original)).toBe(true)
      if (kind !== 'none') expect(bytes.length).toBeLessThan(original.length)
    })
  }

  it('gzip has a fixed header: no name, mtime 0, max compression, OS Unix', async () => {
    const out = join(tmp, 'h.gz')
    await compressFile('gzip', input, out)
    expect([...readFileSync(out).subarray(0, 10)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3])
  })

  it.skipIf(!has('xz'))('xz uses CRC32 checks (the kernel rejects CRC64)', async () => {
    const out = join(tmp, 'check.xz')
    await compressFile('xz', input, out)
    const robot = execFileSync('xz', ['--robot', '--list', out]).toString()
    expect(robot).toMatch(/^file\t.*\tCRC32\t/m)
  })

  it('a missing compressor names its Debian package', async () => {
    const path = process.env.PATH
    process.env.PATH = join(tmp, 'no-tools-here')
    try {
      await expect(compressFile('zstd', input, join(tmp, 'x.zst'))).rejects.toThrow(/install the Debian package 'zstd'/)
      await expect(compressFile('xz', input, join(tmp, 'x.xz'))).rejects.toThrow(/'xz-utils'/)
    } finally {
      process.env.PATH = path
    }
  })

  it('leaves nothing behind when compression fails', async () => {
    const out = join(tmp, 'fail.zst')
    await expect(compressFile('zstd', join(tmp, 'does-not-exist.cpio'), out)).rejects.toThrow()
    expect(() => statSync(out)).toThrow()
  })
})
