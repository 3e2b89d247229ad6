// Debian package resolution, download, verification and the content-addressed cache, against the
// real mirror apt is configured for (small packages only: hdparm, gdisk and their libraries).
import {mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {
  cachedDebPath,
  DebHashMismatchError,
  fetchPackagesWithStats,
  PackageResolveError,
  packageKey,
  parseStanzas,
  readCacheIndex,
  resolvePackages,
  sha256File,
  type ResolvedPackage,
} from '../src/debian/packages.js'
import {compareDebianVersions, parseDepends, satisfies} from '../src/debian/version.js'

describe('Debian versions and dependency fields', () => {
  it('compares versions like dpkg --compare-versions', () => {
    const lt: [string, string][] = [
      ['1.0~rc1', '1.0'],
      ['1.0', '1.0-1'],
      ['1.0-1', '1.0-2'],
      ['1.9', '1.10'],
      ['2:0.1', '3:0.0'],
      ['9.65+ds-1', '9.65+ds-1+b1'],
      ['1.0a', '1.0b'],
      ['1.0', '1.0a'],
      ['1.0~~', '1.0~'],
      ['6.1.176-1', '6.1.192-2'],
      ['1:2.66-4+deb12u2', '1:2.66-4+deb12u3+b1'],
    ]
    for (const [a, b] of lt) {
      expect(compareDebianVersions(a, b), `${a} < ${b}`).toBeLessThan(0)
      expect(compareDebianVersions(b, a), `${b} > ${a}`).toBeGreaterThan(0)
    }
    expect(compareDebianVersions('1:1.0-1', '1:1.0-1')).toBe(0)
    expect(compareDebianVersions('0:1.0', '1.0')).toBe(0)
    expect(satisfies('2.36-9', '>=', '2.34')).toBe(true)
    expect(satisfies('2.36-9', '<<', '2.36')).toBe(false)
    expect(satisfies('6.1.192-2', '=', '6.1.192-2')).toBe(true)
  })

  it('parses Depends with alternatives, versions, arch qualifiers and restrictions', () => {
    expect(parseDepends('libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any, foo [amd64] <!nocheck>, bar (<< 2)')).toEqual([
      [{name: 'libc6', op: '>=', version: '2.34'}],
      [{name: 'debconf', op: '>=', version: '0.5'}, {name: 'debconf-2.0'}],
      [{name: 'python3', archQualifier: 'any'}],
      [{name: 'foo'}],
      [{name: 'bar', op: '<<', version: '2'}],
    ])
    expect(parseStanzas('Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nVersion: 2\n')).toEqual([
      {Package: 'a', Version: '1', Description: 'x\nmore'},
      {Package: 'b', Version: '2'},
    ])
  })
})

describe('resolve, fetch, verify, cache (real mirror)', () => {
  let cacheDir: string
  let resolved: ResolvedPackage[]

  beforeAll(async () => {
    cacheDir = await mkdtemp(join(tmpdir(), 'rdk-debcache-'))
  })
  afterAll(async () => {
    await rm(cacheDir, {recursive: true, force: true})
  })

  it('resolves names to exact versions, hashes and the Depends closure', async () => {
    resolved = await resolvePackages(['hdparm', 'gdisk'], {exclude: ['lsb-base']})
    const names = resolved.map((p) => p.name)
    expect(names.slice(0, 2)).toEqual(['hdparm', 'gdisk'])
    // gdisk's libraries, glibc and libstdc++ (and what they need), but no maintainer-script helpers
    for (const n of ['libc6', 'libstdc++6', 'libgcc-s1', 'libpopt0', 'libuuid1', 'libncursesw6', 'libtinfo6', 'gcc-12-base']) expect(names).toContain(n)
    expect(names).not.toContain('lsb-base')
    expect(names).not.toContain('sysvinit-utils')
    for (const p of resolved) {
      expect(p.sha256).toMatch(/^[0-9a-f]{64}$/)
      expect(p.size).toBeGreaterThan(0)
      expect(p.filename).toMatch(/^pool\/.*\.deb$/)
      expect(['amd64', 'all']).toContain(p.arch)
    }
    const gdisk = resolved.find((p) => p.name === 'gdisk')!
    expect(gdisk.depends).toEqual(expect.arrayContaining(['libc6', 'libstdc++6', 'libpopt0']))
    // no Recommends/Suggests: hdparm recommends powermgmt-base
    expect(names).not.toContain('powermgmt-base')
  })

  it('follows a versioned dependency of a meta-package and satisfies virtual packages', async () => {
    const kernel = await resolvePackages(['linux-image-amd64'], {exclude: ['linux-base', 'kmod', 'initramfs-tools', 'linux-initramfs-tool']})
    const meta = kernel[0]!
    const image = kernel.find((p) => /^linux-image-\d/.test(p.name))!
    expect(meta.depends).toEqual([image.name])
    expect(image.version).toBe(meta.version)
    // libpam0g: "debconf (>= 0.5) | debconf-2.0" -> the real package debconf
    const pam = await resolvePackages(['libpam0g'])
    expect(pam.map((p) => p.name)).toContain('debconf')
  })

  it('names packages it cannot find', async () => {
    const err = await resolvePackages(['hdparm', 'no-such-package-rdk', 'gdisk=0.0-0']).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(PackageResolveError)
    expect(String(err)).toMatch(/no-such-package-rdk, gdisk=0\.0-0/)
    // never passed to apt as an option
    await expect(resolvePackages(['-o=Dir::Etc=/tmp'])).rejects.toThrow(/not a Debian package name/)
  })

  it('downloads into the content-addressed cache, verified, and hits the cache the second time', async () => {
    const t0 = Date.now()
    const first = await fetchPackagesWithStats(resolved, cacheDir)
    const firstMs = Date.now() - t0
    expect(first.stats.downloaded).toBe(resolved.length)
    expect(first.stats.cacheHits).toBe(0)
    for (const [i, p] of resolved.entries()) {
      expect(first.paths[i]).toBe(cachedDebPath(cacheDir, p.sha256))
      expect(await sha256File(first.paths[i]!)).toBe(p.sha256)
      expect((await stat(first.paths[i]!)).size).toBe(p.size)
    }
    const index = await readCacheIndex(cacheDir)
    expect(index[packageKey(resolved[0]!)]).toMatchObject({sha256: resolved[0]!.sha256, size: resolved[0]!.size})

    const t1 = Date.now()
    const second = await fetchPackagesWithStats(resolved, cacheDir)
    const secondMs = Date.now() - t1
    expect(second.stats).toMatchObject({downloaded: 0, cacheHits: resolved.length, bytesDownloaded: 0})
    expect(second.paths).toEqual(first.paths)
    console.log(`fetch ${resolved.length} packages (${first.stats.bytesDownloaded} bytes): ${firstMs} ms; cache hit: ${secondMs} ms`)
  })

  it('detects a corrupted cached .deb: error (deleted) or re-download', async () => {
    const victim = resolved.find((p) => p.name === 'hdparm')!
    const path = cachedDebPath(cacheDir, victim.sha256)
    const good = await readFile(path)
    const bad = Buffer.from(good)
    bad[bad.length - 100] ^= 0xff
    await writeFile(path, bad)

    const err = await fetchPackagesWithStats([victim], cacheDir, {onCorruptCache: 'error'}).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(DebHashMismatchError)
    const m = (err as DebHashMismatchError).message
    expect(m).toContain(packageKey(victim))
    expect(m).toContain(victim.sha256)
    expect((err as DebHashMismatchError).actual).toMatch(/^[0-9a-f]{64}$/)
    expect(m).toContain((err as DebHashMismatchError).actual)
    await expect(stat(path)).rejects.toThrow() // deleted

    await writeFile(path, bad)
    const repaired = await fetchPackagesWithStats([victim], cacheDir)
    expect(repaired.stats.repaired).toEqual([packageKey(victim)])
    expect(repaired.stats.downloaded).toBe(1)
    expect(await sha256File(path)).toBe(victim.sha256)
  })

  it('refuses a download whose hash is not the one apt indexes give, and deletes it', async () => {
    const victim = resolved.find((p) => p.name === 'libpopt0')!
    await expect(fetchPackagesWithStats([{...victim, sha256: '../../escape'}], cacheDir)).rejects.toThrow(PackageResolveError)
    const wrong = {...victim, sha256: '0'.repeat(64)}
    const err = await fetchPackagesWithStats([wrong], cacheDir).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(DebHashMismatchError)
    expect((err as DebHashMismatchError).message).toMatch(new RegExp(`libpopt0.*${'0'.repeat(64)}.*${victim.sha256}`))
    await expect(stat(cachedDebPath(cacheDir, wrong.sha256))).rejects.toThrow()
  })
})
