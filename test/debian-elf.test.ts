// The pure-TS ELF reader and shared-library closure, checked against ldd on this host's binaries and
// by running Debian binaries in a chroot that holds nothing but their closure.
import {mkdir, mkdtemp, readFile, realpath, rename, rm, writeFile} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {elfClosure, MissingLibraryError, parseElfFile, type ClosureResult} from '../src/debian/elf.js'
import {addUsrMergeLinks, extractDeb, noDocs} from '../src/debian/extract.js'
import {fetchPackages, resolvePackages} from '../src/debian/packages.js'
import {DirSink} from '../src/debian/sink.js'
import {isRoot, sharedTestCache} from './fixtures/debian/cache.js'

let work: string
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rdk-elf-'))
})
afterAll(async () => {
  await rm(work, {recursive: true, force: true})
})

/** Real paths of everything ldd says `bin` loads (without the vdso and the binary itself). */
async function lddFiles(bin: string): Promise<string[]> {
  const {stdout} = await run('ldd', [bin])
  const paths: string[] = []
  for (const line of stdout.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line)
    if (m) paths.push(await realpath(m[1]!))
  }
  return [...new Set(paths)].sort()
}

function closureFiles(r: ClosureResult, root: string, exclude: string): string[] {
  return r.files
    .filter((f) => f.type === 'file' && f.role !== 'executable')
    .map((f) => join(root, f.path))
    .filter((p) => p !== exclude)
    .sort()
}

describe('ELF64 reader', () => {
  it('reads PT_INTERP, DT_NEEDED, DT_SONAME, DT_RUNPATH', () => {
    const ls = parseElfFile('/usr/bin/ls')
    expect(ls.interpreter).toBe('/lib64/ld-linux-x86-64.so.2')
    expect(ls.needed).toContain('libc.so.6')
    expect(ls.machine).toBe(62)
    const libc = parseElfFile('/usr/lib/x86_64-linux-gnu/libc.so.6')
    expect(libc.soname).toBe('libc.so.6')
    expect(libc.sections.some((s) => s.name === '.dynamic')).toBe(true)
    expect(parseElfFile('/usr/bin/expr').runpath).toEqual(['/usr/lib/x86_64-linux-gnu'])
    expect(() => parseElfFile('/etc/hostname')).toThrow(/not an ELF file/)
  })
})

describe('closure on this host equals ldd', () => {
  // All installed by .ci/install-deps (udevadm moved from /sbin to /usr/bin in bookworm's udev).
  const bins = [
    '/usr/bin/ls',
    '/usr/bin/node',
    '/usr/bin/expr',
    '/usr/sbin/sgdisk',
    '/usr/bin/qemu-img',
    existsSync('/usr/bin/udevadm') ? '/usr/bin/udevadm' : '/usr/sbin/udevadm',
  ]
  for (const bin of bins) {
    it(bin, async () => {
      const real = await realpath(bin)
      const r = elfClosure([bin], {root: '/'})
      expect(closureFiles(r, '/', real)).toEqual((await lddFiles(bin)).filter((p) => p !== real))
      expect(r.files.some((f) => f.path.endsWith('ld-linux-x86-64.so.2') && f.role === 'interpreter')).toBe(true)
      // /lib64/ld-linux-x86-64.so.2 -> usr/lib64 -> ... : the symlinks on the way are part of the closure
      expect(r.files.find((f) => f.path === 'lib64')).toMatchObject({type: 'symlink', target: 'usr/lib64'})
    })
  }

  it.skipIf(!existsSync('/usr/bin/node'))("node needs only glibc's pieces and libstdc++/libgcc_s", () => {
    const r = elfClosure(['/usr/bin/node'], {root: '/'})
    const libs = new Set(r.objects.flatMap((o) => Object.keys(o.libraries)))
    libs.delete('ld-linux-x86-64.so.2') // some objects list the interpreter in DT_NEEDED too
    expect([...libs].sort()).toEqual(['libc.so.6', 'libdl.so.2', 'libgcc_s.so.1', 'libm.so.6', 'libpthread.so.0', 'libstdc++.so.6'])
  })
})

describe('closure inside an extracted package set', () => {
  let root: string
  let sink: DirSink

  beforeAll(async () => {
    const cache = sharedTestCache()
    const pkgs = await resolvePackages(['gdisk', 'coreutils'], {exclude: ['lsb-base']})
    const debs = await fetchPackages(pkgs, cache)
    root = join(work, 'tree')
    sink = new DirSink(root)
    addUsrMergeLinks(sink)
    for (const [i, deb] of debs.entries()) await extractDeb(deb, sink, {filter: noDocs, source: pkgs[i]!.name})
  }, 300_000)

  async function copyClosure(r: ClosureResult, dest: string): Promise<void> {
    const out = new DirSink(dest)
    for (const f of r.files) {
      if (f.type === 'symlink') out.addSymlink(f.path, f.target!)
      else out.addFileFromHost(f.path, join(root, f.path))
    }
  }

  it("finds sgdisk's libraries and the interpreter, and they are enough to run it (chroot)", async () => {
    const r = elfClosure(['usr/sbin/sgdisk'], {root, ownerOf: (p) => sink.sources.get(p)})
    const paths = r.files.map((f) => f.path)
    for (const lib of ['libuuid.so.1', 'libpopt.so.0', 'libstdc++.so.6', 'libgcc_s.so.1', 'libm.so.6', 'libc.so.6']) {
      expect(paths).toContain(`usr/lib/x86_64-linux-gnu/${lib}`)
    }
    expect(r.files.find((f) => f.role === 'interpreter')?.path).toBe('usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2')
    expect(paths).not.toContain('usr/bin/cat') // nothing that was not asked for
    const min = join(work, 'min-sgdisk')
    await copyClosure(r, min)
    if (isRoot) {
      const {stdout} = await run('chroot', [min, '/usr/sbin/sgdisk', '--version'])
      expect(stdout).toMatch(/GPT fdisk \(sgdisk\) version/)
    }
  })

  it('expands $ORIGIN in DT_RUNPATH (patched expr) and the loader agrees', async () => {
    const dir = join(work, 'origin')
    const r0 = elfClosure(['usr/bin/expr'], {root})
    await copyClosure(r0, dir)
    // move libgmp out of the default directories and point expr's RUNPATH at it through $ORIGIN
    const expr = join(dir, 'usr/bin/expr')
    const buf = await readFile(expr)
    const from = Buffer.from('/usr/lib/x86_64-linux-gnu\0')
    const to = Buffer.alloc(from.length)
    to.write('$ORIGIN/../private')
    const at = buf.indexOf(from)
    expect(at).toBeGreaterThan(0)
    to.copy(buf, at)
    await writeFile(expr, buf)
    await mkdir(join(dir, 'usr/private'))
    const gmp = r0.files.filter((f) => f.path.includes('libgmp'))
    for (const f of gmp) await rename(join(dir, f.path), join(dir, 'usr/private', f.path.split('/').pop()!))
    expect(parseElfFile(expr).runpath).toEqual(['$ORIGIN/../private'])

    const r = elfClosure(['usr/bin/expr'], {root: dir})
    expect(r.objects.find((o) => o.path === 'usr/bin/expr')!.libraries['libgmp.so.10']).toMatch(/^usr\/private\/libgmp\.so\.10/)
    if (isRoot) {
      // run through the loader: without /proc in the chroot ld.so cannot find the main program's
      // $ORIGIN when the kernel starts it (it reads /proc/self/exe); given a path it can
      const {stdout} = await run('chroot', [dir, '/lib64/ld-linux-x86-64.so.2', '/usr/bin/expr', '6', '*', '7'])
      expect(stdout.trim()).toBe('42')
    }
  })

  it('a missing library is an error naming the binary, the soname and where it could come from', async () => {
    const dir = join(work, 'missing')
    const r0 = elfClosure(['usr/sbin/sgdisk'], {root})
    await copyClosure(r0, dir)
    // libpopt only in a directory that is not searched
    await mkdir(join(dir, 'usr/lib/odd'), {recursive: true})
    await rename(join(dir, 'usr/lib/x86_64-linux-gnu/libpopt.so.0.0.2'), join(dir, 'usr/lib/odd/libpopt.so.0'))
    await rm(join(dir, 'usr/lib/x86_64-linux-gnu/libpopt.so.0'))
    const err = (() => {
      try {
        elfClosure(['usr/sbin/sgdisk'], {root: dir, ownerOf: (p) => (p === 'usr/lib/odd/libpopt.so.0' ? 'libpopt0' : undefined)})
      } catch (e) {
        return e
      }
    })()
    expect(err).toBeInstanceOf(MissingLibraryError)
    expect((err as MissingLibraryError).binary).toBe('/usr/sbin/sgdisk')
    expect((err as MissingLibraryError).soname).toBe('libpopt.so.0')
    expect(String(err)).toMatch(/\/usr\/lib\/odd\/libpopt\.so\.0 \(package libpopt0\)/)

    // not in the tree at all: the host's dpkg database names the package, when the host has it
    await rm(join(dir, 'usr/lib/odd'), {recursive: true})
    expect(() => elfClosure(['usr/sbin/sgdisk'], {root: dir})).toThrow(/sgdisk needs libpopt\.so\.0/)
    if (existsSync('/var/lib/dpkg/info/libpopt0:amd64.list') || existsSync('/var/lib/dpkg/info/libpopt0.list')) {
      expect(() => elfClosure(['usr/sbin/sgdisk'], {root: dir})).toThrow(/the Debian package libpopt0 provides it/)
    }
  })

  it("reports scripts' interpreters that are not in the tree", async () => {
    const dir = join(work, 'script')
    await mkdir(join(dir, 'usr/bin'), {recursive: true})
    await writeFile(join(dir, 'usr/bin/hello'), '#!/bin/sh\necho hi\n', {mode: 0o755})
    const r = elfClosure(['usr/bin/hello'], {root: dir})
    expect(r.scriptInterpreters).toEqual([{script: '/usr/bin/hello', interpreter: '/bin/sh'}])
    expect(dirname(r.files[0]!.path)).toBe('usr/bin')
  })
})
