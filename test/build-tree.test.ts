import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {comparePaths, FileTree, normalisePath, sha256, TreeError} from '../src/builder/tree.js'

const tmp = mkdtempSync(join(tmpdir(), 'rdk-tree-test-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

describe('image paths', () => {
  it('normalises to an absolute path without empty or . components', () => {
    expect(normalisePath('etc//rdk/./agent.json/')).toBe('/etc/rdk/agent.json')
    expect(normalisePath('/')).toBe('/')
  })

  it('rejects .., NUL and empty paths', () => {
    expect(() => normalisePath('/etc/../root')).toThrow(/'\.\.' is not allowed/)
    expect(() => normalisePath('../escape')).toThrow(TreeError)
    expect(() => normalisePath('/etc/pass\0wd')).toThrow(/NUL/)
    expect(() => normalisePath('')).toThrow(/empty/)
    const t = new FileTree()
    expect(() => t.addFile('/a/../../b', 'x')).toThrow(TreeError)
  })

  it('sorts component-wise: a directory and its contents stay together, parents first', () => {
    const paths = ['/a-b', '/a/b', '/a', '/a/b/c', '/B', '/a.b']
    expect([...paths].sort(comparePaths)).toEqual(['/B', '/a', '/a/b', '/a/b/c', '/a-b', '/a.b'])
  })
})

describe('FileTree', () => {
  it('creates parent directories implicitly with mode 0755 and lists entries sorted', () => {
    const t = new FileTree()
    t.addFile('/usr/share/doc/x/README', 'hi', {mode: 0o600})
    t.addDir('/etc', 0o750)
    expect(t.entries().map((e) => [e.path, e.type, e.mode.toString(8)])).toEqual([
      ['/etc', 'dir', '750'],
      ['/usr', 'dir', '755'],
      ['/usr/share', 'dir', '755'],
      ['/usr/share/doc', 'dir', '755'],
      ['/usr/share/doc/x', 'dir', '755'],
      ['/usr/share/doc/x/README', 'file', '600'],
    ])
  })

  it('stores content by sha256 and de-duplicates it', async () => {
    const t = new FileTree()
    t.addFile('/a', 'same')
    t.addFile('/b', Buffer.from('same'))
    expect(t.get('/a')!.hash).toBe(sha256('same'))
    expect(t.get('/b')!.hash).toBe(t.get('/a')!.hash)
    expect((await t.read('/b')).toString()).toBe('same')
  })

  it('adds host files by hash, keeping the host mode unless told otherwise', async () => {
    const host = join(tmp, 'tool')
    writeFileSync(host, 'binary-ish\n', {mode: 0o751})
    const t = new FileTree()
    await t.addFileFromHost('/usr/bin/tool', host)
    await t.addFileFromHost('/usr/bin/tool2', host, {mode: 0o700})
    expect(t.get('/usr/bin/tool')).toMatchObject({type: 'file', mode: 0o751, size: 11, hash: sha256('binary-ish\n')})
    expect(t.get('/usr/bin/tool2')!.mode).toBe(0o700)
    expect(t.blobs.hostPath(sha256('binary-ish\n'))).toBe(host)
    await expect(t.addFileFromHost('/x', join(tmp, 'missing'))).rejects.toThrow(/ENOENT/)
    await expect(t.addFileFromHost('/x', tmp)).rejects.toThrow(/not a regular file/)
  })

  it('resolves symlinked parents like a filesystem (merged /usr), clamped at the root', () => {
    const t = new FileTree()
    t.addDir('/usr/bin')
    t.addSymlink('/bin', 'usr/bin')
    t.addFile('/bin/sh', '#!')
    expect(t.has('/usr/bin/sh')).toBe(true)
    expect(t.get('/bin/sh')!.path).toBe('/usr/bin/sh')
    expect(t.get('/bin')!.type).toBe('symlink')
    t.addSymlink('/escape', '../../../../tmp')
    t.addFile('/escape/x', 'y')
    expect(t.has('/tmp/x')).toBe(true)
  })

  it('keeps a symlink to a directory when the directory is added again (dpkg, mkdir -p)', () => {
    const t = new FileTree()
    t.addSymlink('/lib', 'usr/lib')
    t.addDir('/lib', 0o755) // a package's data.tar lists ./lib/
    expect(t.get('/lib')!.type).toBe('symlink')
    expect(t.get('/usr/lib')!.type).toBe('dir')
    t.addFile('/lib/libc.so.6', 'elf')
    expect(t.has('/usr/lib/libc.so.6')).toBe(true)
    t.addFile('/f', 'x')
    t.addSymlink('/to-file', 'f')
    expect(() => t.addDir('/to-file')).toThrow(/is a symlink to file \/f/)
  })

  it('adds device nodes and symlinks', () => {
    const t = new FileTree()
    t.addDevice('/dev/console', 'char', 5, 1)
    t.addDevice('/dev/sda', 'block', 8, 0, 0o660)
    t.addSymlink('/dev/stdin', '/proc/self/fd/0')
    expect(t.get('/dev/console')).toMatchObject({type: 'char', major: 5, minor: 1, mode: 0o600})
    expect(t.get('/dev/sda')).toMatchObject({type: 'block', major: 8, minor: 0, mode: 0o660})
    expect(t.get('/dev/stdin')).toMatchObject({type: 'symlink', target: '/proc/self/fd/0', size: 15})
    expect(() => t.addDevice('/dev/bad', 'char', -1, 0)).toThrow(/major/)
  })

  it('refuses to add below a file and to replace a non-empty directory', () => {
    const t = new FileTree()
    t.addFile('/etc/x', 'file')
    expect(() => t.addFile('/etc/x/y', 'z')).toThrow(/\/etc\/x is a file, not a directory/)
    expect(() => t.addFile('/etc', 'z')).toThrow(/non-empty directory/)
  })

  it('removes a directory with everything below it', () => {
    const t = new FileTree()
    t.addFile('/a/b/c', '1')
    t.addFile('/a/d', '2')
    t.addFile('/ab', '3')
    expect(t.remove('/a')).toBe(true)
    expect(t.entries().map((e) => e.path)).toEqual(['/ab'])
    expect(t.remove('/a')).toBe(false)
  })

  it('has a digest that depends on content, modes and owners but not on insertion order', () => {
    const build = (order: number) => {
      const t = new FileTree()
      const ops = [
        () => t.addFile('/etc/a', 'A'),
        () => t.addDir('/var/lib', 0o700),
        () => t.addSymlink('/l', 'etc/a'),
        () => t.addDevice('/dev/null', 'char', 1, 3, 0o666),
      ]
      for (const op of order ? [...ops].reverse() : ops) op()
      return t
    }
    const d = build(0).digest()
    expect(build(1).digest()).toBe(d)
    const changed = build(0)
    changed.addFile('/etc/a', 'B')
    expect(changed.digest()).not.toBe(d)
    const mode = build(0)
    mode.addFile('/etc/a', 'A', {mode: 0o600})
    expect(mode.digest()).not.toBe(d)
    const owner = build(0)
    owner.addFile('/etc/a', 'A', {owner: '1000:1000'})
    expect(owner.digest()).not.toBe(d)
  })

  it('remembers who added what and reports sizes by source', async () => {
    const t = new FileTree()
    await t.withSource('base', () => {
      t.addFile('/etc/passwd', 'root:x:0:0::/root:/bin/sh\n')
      t.addDir('/tmp', 0o1777)
    })
    t.addFile('/usr/bin/big', Buffer.alloc(1000), {source: 'package:busybox'})
    expect(t.get('/etc/passwd')!.source).toBe('base')
    expect(t.sizeBy('base')).toBe(26)
    expect(t.sizeBy('package:busybox')).toBe(1000)
    expect(t.sizeBySource()[0]).toMatchObject({source: 'package:busybox', files: 1, bytes: 1000})
  })

  it('merges a fragment without letting its implicit parents override real directories', () => {
    const t = new FileTree()
    t.addDir('/root', 0o700)
    const frag = new FileTree(t.blobs)
    frag.addFile('/root/.profile', 'PS1=#')
    frag.addDir('/srv', 0o750)
    t.merge(frag)
    expect(t.get('/root')!.mode).toBe(0o700)
    expect(t.get('/root/.profile')!.type).toBe('file')
    expect(t.get('/srv')!.mode).toBe(0o750)
  })

  it('parses owners, including names resolved later from the image', () => {
    const t = new FileTree()
    expect(t.addFile('/a', 'x', {owner: '1000:100'})).toMatchObject({uid: 1000, gid: 100})
    expect(t.addFile('/b', 'x', {owner: 'root'})).toMatchObject({uid: 0, gid: 0})
    expect(t.addFile('/c', 'x', {owner: 'daemon:adm'})).toMatchObject({owner: 'daemon:adm'})
    expect(() => t.addFile('/d', 'x', {owner: 'bad owner'})).toThrow(/invalid owner/)
  })

  it('keeps hard links pointing at their file', () => {
    const t = new FileTree()
    t.addFile('/usr/bin/busybox', 'bb', {mode: 0o755})
    t.addHardlink('/usr/bin/sh', '/usr/bin/busybox')
    expect(t.get('/usr/bin/sh')).toMatchObject({type: 'hardlink', target: '/usr/bin/busybox'})
    expect(() => t.addHardlink('/x', '/x')).toThrow(/itself/)
  })
})
