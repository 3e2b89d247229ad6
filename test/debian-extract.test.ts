// .deb extraction without dpkg: path normalisation, traversal refusal (hand-made malicious tars),
// usr-merge, modes, hard links, and the chroot-style DirSink.
import {lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {pack, type Header} from 'tar-stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {
  addUsrMergeLinks,
  extractDeb,
  extractTar,
  listDeb,
  noDocs,
  normaliseEntryPath,
  TarTraversalError,
  unpackDebCached,
  usrMergePath,
} from '../src/debian/extract.js'
import {fetchPackages, resolvePackages} from '../src/debian/packages.js'
import {DirSink, SinkPathError} from '../src/debian/sink.js'
import {sharedTestCache} from './fixtures/debian/cache.js'

type Entry = Partial<Header> & {name: string; body?: string}

async function makeTar(entries: Entry[]): Promise<Buffer> {
  const p = pack()
  const chunks: Buffer[] = []
  const done = (async () => {
    for await (const c of p) chunks.push(Buffer.from(c as Uint8Array))
  })()
  for (const {body, ...h} of entries) {
    await new Promise<void>((res, rej) => p.entry({type: 'file', mode: 0o644, ...h}, body ?? '', (e) => (e ? rej(e) : res())))
  }
  p.finalize()
  await done
  return Buffer.concat(chunks)
}

let work: string
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rdk-extract-'))
})
afterAll(async () => {
  await rm(work, {recursive: true, force: true})
})

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  )
}

describe('path normalisation', () => {
  it('strips ./ and refuses .. and absolute names', () => {
    expect(normaliseEntryPath('./usr/bin/x')).toBe('usr/bin/x')
    expect(normaliseEntryPath('./usr/lib/')).toBe('usr/lib')
    expect(normaliseEntryPath('./')).toBe('')
    expect(() => normaliseEntryPath('../evil')).toThrow(TarTraversalError)
    expect(() => normaliseEntryPath('./usr/../../evil')).toThrow(/'\.\.'/)
    expect(() => normaliseEntryPath('/etc/passwd')).toThrow(/absolute/)
  })

  it('maps the usr-merged directories into /usr', () => {
    expect(usrMergePath('bin/ls')).toBe('usr/bin/ls')
    expect(usrMergePath('sbin')).toBe('usr/sbin')
    expect(usrMergePath('lib/x86_64-linux-gnu/libc.so.6')).toBe('usr/lib/x86_64-linux-gnu/libc.so.6')
    expect(usrMergePath('lib64/ld-linux-x86-64.so.2')).toBe('usr/lib64/ld-linux-x86-64.so.2')
    expect(usrMergePath('libexec/x')).toBe('libexec/x')
    expect(usrMergePath('etc/lib/x')).toBe('etc/lib/x')
    expect(usrMergePath('usr/bin/x')).toBe('usr/bin/x')
  })
})

describe('malicious archives', () => {
  // An absolute member name: an extractor that honoured it would write this file (unique per run).
  const EVIL_ABS = join(tmpdir(), `rdk-evil-abs-${process.pid}-${Date.now()}`)
  const cases: [string, Entry[]][] = [
    [
      '../evil',
      [
        {name: './usr/bin/ok', body: 'ok'},
        {name: '../evil', body: 'pwned'},
      ],
    ],
    ['a/../../evil', [{name: './a/../../evil', body: 'pwned'}]],
    ['/abs', [{name: EVIL_ABS, body: 'pwned'}]],
    [
      'hard link to ../',
      [
        {name: './usr/bin/ok', body: 'ok'},
        {name: './usr/bin/link', type: 'link', linkname: '../../etc/shadow'},
      ],
    ],
  ]
  for (const [label, entries] of cases) {
    it(`refuses ${label} and writes nothing`, async () => {
      const root = join(work, `evil-${label.replace(/\W+/g, '_')}`)
      const tar = await makeTar(entries)
      await expect(extractTar(tar, new DirSink(root), {archiveName: 'evil.deb'})).rejects.toThrow(TarTraversalError)
      await expect(extractTar(tar, new DirSink(root), {archiveName: 'evil.deb'})).rejects.toThrow(/evil\.deb/)
      expect(await readdir(root)).toEqual([]) // validated before anything is written
      expect(await exists(join(work, 'evil'))).toBe(false)
      expect(await exists(EVIL_ABS)).toBe(false)
    })
  }

  it('cannot escape through a symlink planted by an earlier entry', async () => {
    const outside = join(work, 'outside')
    await mkdir(outside)
    const root = join(work, 'symlink-escape')
    const tar = await makeTar([
      {name: './esc', type: 'symlink', linkname: outside},
      {name: './esc/pwned', body: 'pwned'},
      {name: './rel', type: 'symlink', linkname: `../../../../../../..${outside}`},
      {name: './rel/pwned2', body: 'pwned'},
    ])
    await extractTar(tar, new DirSink(root))
    expect(await readdir(outside)).toEqual([])
    // chroot semantics: the absolute target means the sink's root
    expect(await readFile(join(root, outside, 'pwned'), 'utf8')).toBe('pwned')
    expect(await readFile(join(root, outside, 'pwned2'), 'utf8')).toBe('pwned')
    expect(() => new DirSink(root).addFile('../x', Buffer.from(''))).toThrow(SinkPathError)
  })
})

describe('extraction', () => {
  it('keeps modes and symlinks, copies hard links, merges /usr and drops self-links', async () => {
    const root = join(work, 'handmade')
    const sink = new DirSink(root)
    addUsrMergeLinks(sink)
    const tar = await makeTar([
      {name: './', type: 'directory', mode: 0o755},
      {name: './bin/', type: 'directory', mode: 0o755},
      {name: './bin/tool', body: '#!/bin/sh\n', mode: 0o4755},
      {name: './sbin/tool-link', type: 'symlink', linkname: '/bin/tool'},
      {name: './usr/bin/tool', type: 'symlink', linkname: '/bin/tool'}, // points at itself once merged
      {name: './usr/bin/tool2', type: 'link', linkname: './bin/tool'},
      {name: './lib/x86_64-linux-gnu/libx.so.1', body: 'ELF?', mode: 0o644},
      {name: './usr/share/doc/pkg/copyright', body: 'text'},
      {name: './dev/null', type: 'character-device', devmajor: 1, devminor: 3},
    ])
    const r = await extractTar(tar, sink, {filter: noDocs, source: 'pkg'})
    expect((await stat(join(root, 'usr/bin/tool'))).mode & 0o7777).toBe(0o4755)
    expect(await readFile(join(root, 'bin/tool'), 'utf8')).toBe('#!/bin/sh\n') // through /bin -> usr/bin
    expect(await readlink(join(root, 'usr/sbin/tool-link'))).toBe('/bin/tool')
    expect((await lstat(join(root, 'usr/bin/tool2'))).isFile()).toBe(true)
    expect((await stat(join(root, 'usr/bin/tool2'))).mode & 0o7777).toBe(0o4755)
    expect(await readFile(join(root, 'usr/lib/x86_64-linux-gnu/libx.so.1'), 'utf8')).toBe('ELF?')
    expect(await readlink(join(root, 'lib'))).toBe('usr/lib')
    expect(await exists(join(root, 'usr/share/doc'))).toBe(false)
    expect(r.skipped.map((s) => s.path).sort()).toEqual(['dev/null', 'usr/bin/tool'])
    expect(r.hardlinks).toEqual([{path: 'usr/bin/tool2', target: 'usr/bin/tool'}])
    expect(sink.sources.get('usr/bin/tool')).toBe('pkg')
  })

  it('extracts a real .deb (hdparm) with usr-merge and no maintainer scripts', async () => {
    const cache = sharedTestCache()
    const [hdparm] = await resolvePackages(['hdparm'], {noDependencies: true})
    const [deb] = await fetchPackages([hdparm!], cache)
    const root = join(work, 'hdparm')
    const sink = new DirSink(root)
    addUsrMergeLinks(sink)
    const t0 = Date.now()
    const r = await extractDeb(deb!, sink, {source: 'hdparm', filter: noDocs})
    console.log(`extract hdparm: ${Date.now() - t0} ms, ${r.files.length} files, ${r.bytes} bytes`)
    // Debian ships /sbin/hdparm: it lands in /usr/sbin
    expect(r.files.map((f) => f.path)).toContain('usr/sbin/hdparm')
    expect((await stat(join(root, 'usr/sbin/hdparm'))).mode & 0o777).toBe(0o755)
    expect(await exists(join(root, 'usr/share/man'))).toBe(false)
    expect(await exists(join(root, 'DEBIAN'))).toBe(false)
    const listed = await listDeb(deb!)
    expect(listed.find((e) => e.archivePath === 'sbin/hdparm')?.path).toBe('usr/sbin/hdparm')

    const again = await unpackDebCached(deb!, hdparm!.sha256, cache, {tag: 'test-all'})
    expect((await stat(join(again.dir, 'usr/sbin/hdparm'))).isFile()).toBe(true)
    expect((await unpackDebCached(deb!, hdparm!.sha256, cache, {tag: 'test-all'})).hit).toBe(true)
  })
})
