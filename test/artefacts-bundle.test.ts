/**
 * PXE tree, iPXE script and release bundles without booting:
 * - the PXE tree's files and both menus (pxelinux IPAPPEND 2, GRUB's BOOTIF from $net_default_mac);
 * - the iPXE script with a base URL and with relative URLs; bad base URLs;
 * - writeBundle: tar.gz and zip byte-identical across runs and time zones, `sha256sum -c` verifies
 *   SHA256SUMS after unpacking with the system's tar and unzip;
 * - `rdk build --format tar,zip` twice: identical bundles, `<file>.sha256` files and the bundle's
 *   SHA256SUMS verify, manifest.json lists spec, elements, packages and every file's sha256.
 */
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {writeBundle} from '../src/artefacts/bundle.js'
import {ipxeScript, writeIpxeScript} from '../src/artefacts/ipxe.js'
import {makePxeTree} from '../src/artefacts/pxe.js'
import {run} from '../src/common/exec.js'
import {buildTiny, busyboxInitrd, stubKernel} from './helpers/artefacts.js'

let dir: string
let kernel: string
let initrd: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rdk-bundle-unit-'))
  kernel = join(dir, 'vmlinuz')
  await writeFile(kernel, stubKernel())
  initrd = await busyboxInitrd(dir)
})
afterAll(async () => {
  if (dir) await rm(dir, {recursive: true, force: true})
})

describe('PXE tree', () => {
  it('has pxelinux for BIOS, a GRUB network image for UEFI, kernel, initramfs and the baked args', async () => {
    const out = join(dir, 'ipa-pxe')
    const r = await makePxeTree({kernel, initrd, output: out, name: 'ipa', kernelArgs: ['ipa-api-url=http://10.0.2.2:6385']})
    expect(r.files).toEqual(['grub/grub.cfg', 'grubx64.efi', 'ipa.initramfs', 'ipa.kernel', 'ldlinux.c32', 'pxelinux.0', 'pxelinux.cfg/default'])
    const pxecfg = await readFile(join(out, 'pxelinux.cfg/default'), 'utf8')
    expect(pxecfg).toMatch(
      /KERNEL ipa\.kernel\n\s+INITRD ipa\.initramfs\n\s+APPEND console=tty0 console=ttyS0,115200n8 ipa-api-url=http:\/\/10\.0\.2\.2:6385\n\s+IPAPPEND 2/,
    )
    const grub = await readFile(join(out, 'grub/grub.cfg'), 'utf8')
    expect(grub).toContain('linux /ipa.kernel console=tty0 console=ttyS0,115200n8 ipa-api-url=http://10.0.2.2:6385 BOOTIF=01-$net_default_mac\n')
    expect((await readFile(join(out, 'grubx64.efi'))).subarray(0, 2).toString('latin1')).toBe('MZ')
    expect(await readFile(join(out, 'ipa.initramfs'))).toEqual(await readFile(initrd))
    // Rewriting replaces the tree atomically; bad input leaves the old one alone.
    await expect(makePxeTree({kernel, initrd: join(dir, 'none'), output: out, name: 'ipa'})).rejects.toThrow(/initramfs .*none does not exist/)
    expect((await readdir(out)).sort()).toEqual(['grub', 'grubx64.efi', 'ipa.initramfs', 'ipa.kernel', 'ldlinux.c32', 'pxelinux.0', 'pxelinux.cfg'])
    await makePxeTree({kernel, initrd, output: out, name: 'ipa', kernelArgs: ['x=2']})
    expect(await readFile(join(out, 'pxelinux.cfg/default'), 'utf8')).toMatch(/APPEND console=tty0 console=ttyS0,115200n8 x=2\n/)
    expect((await readdir(dir)).filter((f) => f.includes('rdk-tmp'))).toEqual([])
  })
})

describe('iPXE script', () => {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: iPXE's own ${…} syntax, not a JS template
  it('uses the base URL, or URLs relative to the script; BOOTIF from ${netX/mac}', async () => {
    const rel = await ipxeScript({name: 'ipa', kernelArgs: ['ipa-debug=1']})
    expect(rel).toMatch(/^#!ipxe\n/)
    // biome-ignore lint/suspicious/noTemplateCurlyInString: iPXE's own ${…} syntax, not a JS template
    expect(rel).toContain('kernel ipa.kernel initrd=ipa.initramfs console=tty0 console=ttyS0,115200n8 ipa-debug=1 BOOTIF=01-${netX/mac:hexhyp}\n')
    expect(rel).toContain('initrd ipa.initramfs\nboot\n')
    const abs = await ipxeScript({name: 'ipa', baseUrl: 'http://images.example/rdk'})
    expect(abs).toContain('kernel http://images.example/rdk/ipa.kernel initrd=ipa.initramfs ')
    expect(abs).toContain('initrd http://images.example/rdk/ipa.initramfs\n')
    await expect(ipxeScript({name: 'ipa', baseUrl: 'ftp://x/'})).rejects.toThrow(/must be an http:\/\/ or https:\/\/ URL/)
    // biome-ignore lint/suspicious/noTemplateCurlyInString: iPXE's own ${…} syntax, not a JS template
    await expect(ipxeScript({name: 'ipa', baseUrl: 'http://x/${evil}'})).rejects.toThrow(/without spaces or '\$'/)
    await expect(writeIpxeScript(join(dir, 'missing', 'ipa.ipxe'), {name: 'ipa'})).rejects.toThrow(/missing does not exist/)
  })
})

describe('writeBundle', () => {
  it('is byte-identical across runs and time zones; sha256sum -c verifies it after unpacking', async () => {
    const pxe = join(dir, 'b-pxe')
    await makePxeTree({kernel, initrd, output: pxe, name: 'b'})
    const entries = [
      {name: 'b.kernel', path: kernel},
      {name: 'b.initramfs', path: initrd},
      {name: 'b-pxe', path: pxe},
    ]
    const manifest = {name: 'b', spec: {formats: ['tar', 'zip']}}
    const tz = process.env.TZ
    const outs: Record<string, Buffer[]> = {tar: [], zip: []}
    try {
      for (const [i, zone] of ['UTC', 'Asia/Tokyo'].entries()) {
        process.env.TZ = zone
        const d = join(dir, `bundle-${i}`)
        await mkdir(d)
        for (const f of ['tar', 'zip'] as const) {
          const file = join(d, f === 'tar' ? 'b.tar.gz' : 'b.zip')
          const r = await writeBundle(f, file, entries, {manifest, sourceDateEpoch: 1704067200})
          expect(r.files.map((x) => x.name)).toContain('b-pxe/pxelinux.cfg/default')
          outs[f]!.push(await readFile(file))
        }
      }
    } finally {
      if (tz === undefined) delete process.env.TZ
      else process.env.TZ = tz
    }
    expect(outs.tar![0]!.equals(outs.tar![1]!)).toBe(true)
    expect(outs.zip![0]!.equals(outs.zip![1]!)).toBe(true)

    const tx = join(dir, 'tx')
    const zx = join(dir, 'zx')
    await mkdir(tx)
    await mkdir(zx)
    await run('tar', ['-xzf', join(dir, 'bundle-0', 'b.tar.gz'), '-C', tx])
    await run('unzip', ['-q', join(dir, 'bundle-0', 'b.zip'), '-d', zx])
    for (const x of [tx, zx]) {
      const check = await run('sha256sum', ['-c', 'SHA256SUMS'], {cwd: x})
      expect(check.stdout).toMatch(/b\.kernel: OK/)
      expect(check.stdout).toMatch(/b-pxe\/grubx64\.efi: OK/)
      expect(check.stdout).toMatch(/manifest\.json: OK/)
      const m = JSON.parse(await readFile(join(x, 'manifest.json'), 'utf8'))
      expect(m.name).toBe('b')
      expect(m.files.find((f: {name: string}) => f.name === 'b.initramfs').sha256).toMatch(/^[0-9a-f]{64}$/)
    }
    const listing = await run('tar', ['-tvzf', join(dir, 'bundle-0', 'b.tar.gz')])
    for (const line of listing.stdout.trim().split('\n')) expect(line).toMatch(/^(-rw-r--r--|drwxr-xr-x) 0\/0 +\d+ 2024-01-01 00:00 /)
    const zl = await run('unzip', ['-l', join(dir, 'bundle-0', 'b.zip')], {env: {TZ: 'UTC'}})
    expect(zl.stdout).toMatch(/2024-01-01 00:00 +b\.kernel/)
  }, 120_000)

  it('refuses entry names that escape the archive and missing inputs, leaving nothing', async () => {
    const d = join(dir, 'bad-bundle')
    await mkdir(d)
    await expect(writeBundle('tar', join(d, 'x.tar.gz'), [{name: '../evil', path: kernel}], {sourceDateEpoch: 0})).rejects.toThrow(/not a plain relative path/)
    await expect(writeBundle('zip', join(d, 'x.zip'), [{name: 'k', path: join(dir, 'nope')}], {sourceDateEpoch: 0})).rejects.toThrow(/nope does not exist/)
    await expect(writeBundle('zip', join(d, 'x.zip'), [{name: 'SHA256SUMS', path: kernel}], {sourceDateEpoch: 0})).rejects.toThrow(
      /would be in the archive twice/,
    )
    expect(await readdir(d)).toEqual([])
  })
})

describe('rdk build --format tar,zip', () => {
  it('writes identical bundles twice; .sha256 files and the SHA256SUMS inside verify', async () => {
    const a = join(dir, 'build-a')
    const b = join(dir, 'build-b')
    const ra = await buildTiny(a, ['kernel', 'initramfs', 'tar', 'zip'], ['ipa-debug=1'])
    const rb = await buildTiny(b, ['kernel', 'initramfs', 'tar', 'zip'], ['ipa-debug=1'])
    const files = ra.artefacts.map((x) => x.file).sort()
    expect(files).toEqual([
      'rdk-tiny.initramfs',
      'rdk-tiny.initramfs.sha256',
      'rdk-tiny.kernel',
      'rdk-tiny.kernel.sha256',
      'rdk-tiny.manifest.json',
      'rdk-tiny.tar.gz',
      'rdk-tiny.tar.gz.sha256',
      'rdk-tiny.zip',
      'rdk-tiny.zip.sha256',
    ])
    for (const f of ['rdk-tiny.tar.gz', 'rdk-tiny.zip']) {
      expect(rb.artefacts.find((x) => x.file === f)!.sha256).toBe(ra.artefacts.find((x) => x.file === f)!.sha256)
      expect((await readFile(join(a, f))).equals(await readFile(join(b, f)))).toBe(true)
    }
    const sums = await run('sha256sum', ['-c', ...files.filter((f) => f.endsWith('.sha256'))], {cwd: a})
    expect(sums.stdout.trim().split('\n')).toHaveLength(4)
    expect(sums.stdout).not.toMatch(/FAILED/)
    const x = join(dir, 'unpacked')
    await mkdir(x)
    await run('tar', ['-xzf', join(a, 'rdk-tiny.tar.gz'), '-C', x])
    expect((await readdir(x)).sort()).toEqual([
      'SHA256SUMS',
      'manifest.json',
      'rdk-tiny-pxe',
      'rdk-tiny.initramfs',
      'rdk-tiny.ipxe',
      'rdk-tiny.iso',
      'rdk-tiny.kernel',
    ])
    const check = await run('sha256sum', ['-c', 'SHA256SUMS'], {cwd: x})
    expect(check.stdout).toMatch(/rdk-tiny\.iso: OK/)
    expect(check.stdout).toMatch(/rdk-tiny-pxe\/pxelinux\.0: OK/)
    expect(check.stdout).not.toMatch(/FAILED/)
    const m = JSON.parse(await readFile(join(x, 'manifest.json'), 'utf8'))
    expect(m.spec.kernelArgs).toEqual({'ipa-debug': '1'})
    expect(m.elements.map((e: {name: string}) => e.name)).toContain('base')
    expect(m.packages.find((p: {name: string}) => p.name === 'qemu-utils')?.version).toBeTruthy()
    expect(m.files.find((f: {name: string}) => f.name === 'rdk-tiny.iso').size).toBeGreaterThan(1e6)
    // The initramfs in the bundle is the one written next to it.
    expect(m.files.find((f: {name: string}) => f.name === 'rdk-tiny.initramfs').sha256).toBe(ra.artefacts.find((f) => f.file === 'rdk-tiny.initramfs')!.sha256)
  }, 900_000)
})
