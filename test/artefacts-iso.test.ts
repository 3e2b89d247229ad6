/**
 * The ISO writer without booting: layout (El Torito BIOS + UEFI entries, isohybrid MBR + GPT, the
 * ESP's BOOTX64.EFI, the baked command line in both menus), byte-identical rebuilds, and bad input
 * (missing kernel/initrd, an initrd that is no cpio, outputs that cannot be written) failing clearly
 * with nothing left behind. The kernel is a stub with a bzImage header (xorriso does not care); the
 * initramfs is a real busybox cpio made with the `cpio` tool.
 */
import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {ArtefactError, bootCmdline, checkInitrd, kernelArgWords, volumeLabel} from '../src/artefacts/common.js'
import {makeIso} from '../src/artefacts/iso.js'
import {run} from '../src/common/exec.js'
import {busyboxInitrd, stubKernel} from './helpers/artefacts.js'

let dir: string
let kernel: string
let initrd: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rdk-iso-unit-'))
  kernel = join(dir, 'vmlinuz')
  await writeFile(kernel, stubKernel())
  initrd = await busyboxInitrd(dir)
})
afterAll(async () => {
  if (dir) await rm(dir, {recursive: true, force: true})
})

async function xorrisoReport(iso: string, what: string): Promise<string> {
  const r = await run('xorriso', ['-indev', iso, what, 'plain'])
  return r.stdout + r.stderr
}

async function extract(iso: string, path: string, to: string): Promise<string> {
  await run('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', path, to])
  return to
}

describe('makeIso: layout', () => {
  let iso: string
  beforeAll(async () => {
    const out = join(dir, 'layout')
    await mkdir(out)
    iso = join(out, 'ipa.iso')
    await makeIso({kernel, initrd, output: iso, kernelArgs: ['ipa-api-url=http://10.0.2.2:6385', 'ipa-debug=1'], label: 'ipa-test'})
  }, 60_000)

  it('has BIOS and UEFI El Torito entries and an isohybrid MBR + GPT with the ESP', async () => {
    const eltorito = await xorrisoReport(iso, '-report_el_torito')
    expect(eltorito).toMatch(/El Torito boot img :\s+1\s+BIOS\s+y\s+none/)
    expect(eltorito).toMatch(/El Torito boot img :\s+2\s+UEFI\s+y\s+none/)
    expect(eltorito).toMatch(/El Torito img path :\s+1\s+\/isolinux\/isolinux\.bin/)
    expect(eltorito).toMatch(/El Torito img path :\s+2\s+\/boot\/efi\.img/)
    const sys = await xorrisoReport(iso, '-report_system_area')
    expect(sys).toMatch(/MBR partition table/)
    expect(sys).toMatch(/System area summary: MBR isohybrid .*GPT/)
    // The ESP is an MBR partition of type 0xEF and a GPT partition, both the El Torito EFI image.
    expect(sys).toMatch(/MBR partition\s+:\s+2\s+0x00\s+0xef/)
    expect(sys).toMatch(/MBR partition path :\s+2\s+\/boot\/efi\.img/)
    expect(sys).toMatch(/GPT partition path :\s+2\s+\/boot\/efi\.img/)
  })

  it('carries the volume label, the kernel, initramfs, and the baked command line in both menus', async () => {
    const {stdout, stderr} = await run('xorriso', ['-indev', iso, '-pvd_info'])
    expect(stdout + stderr).toMatch(/Volume Id\s*:\s*IPA_TEST/)
    const iscfg = await readFile(await extract(iso, '/isolinux/isolinux.cfg', join(dir, 'isolinux.cfg')), 'utf8')
    const grub = await readFile(await extract(iso, '/boot/grub/grub.cfg', join(dir, 'grub.cfg')), 'utf8')
    const cmdline = 'console=tty0 console=ttyS0,115200n8 boot_method=vmedia ipa-api-url=http://10.0.2.2:6385 ipa-debug=1'
    expect(iscfg).toContain(`APPEND ${cmdline}\n`)
    expect(iscfg).toMatch(/KERNEL \/boot\/vmlinuz\n\s+INITRD \/boot\/initrd\.img/)
    expect(iscfg).toMatch(/^SERIAL 0 115200$/m)
    expect(grub).toContain(`linux /boot/vmlinuz ${cmdline}\n`)
    expect(grub).toContain('initrd /boot/initrd.img')
    expect(await readFile(await extract(iso, '/boot/initrd.img', join(dir, 'initrd.out')))).toEqual(await readFile(initrd))
    expect(await readFile(await extract(iso, '/boot/vmlinuz', join(dir, 'vmlinuz.out')))).toEqual(await readFile(kernel))
  })

  it('the ESP image holds EFI/BOOT/BOOTX64.EFI, a GRUB whose embedded config finds this ISO', async () => {
    const esp = await extract(iso, '/boot/efi.img', join(dir, 'efi.img'))
    const dirList = await run('mdir', ['-i', esp, '-b', '::/EFI/BOOT'], {env: {MTOOLS_SKIP_CHECK: '1'}})
    expect(dirList.stdout).toMatch(/BOOTX64\.EFI/i)
    await run('mcopy', ['-i', esp, '::/EFI/BOOT/BOOTX64.EFI', join(dir, 'bootx64.efi')], {env: {MTOOLS_SKIP_CHECK: '1'}})
    const efi = await readFile(join(dir, 'bootx64.efi'))
    expect(efi.subarray(0, 2).toString('latin1')).toBe('MZ')
    const marker = /search --no-floppy --set=root --file (\/\.disk\/rdk-[0-9a-f]{16})/.exec(efi.toString('latin1'))
    expect(marker).not.toBeNull()
    const listing = await run('xorriso', ['-indev', iso, '-find', '/.disk', '-type', 'f'])
    expect(listing.stdout).toContain(`'${marker![1]}'`)
  })
})

describe('makeIso: reproducible', () => {
  it('gives byte-identical ISOs for the same inputs, whatever the input files’ times', async () => {
    const a = join(dir, 'ra')
    const b = join(dir, 'rb')
    await mkdir(a)
    await mkdir(b)
    const opts = {kernel, initrd, kernelArgs: {'ipa-insecure': '1', nofb: null}, label: 'RDK', sourceDateEpoch: 1700000000}
    const r1 = await makeIso({...opts, output: join(a, 'x.iso')})
    await utimes(kernel, new Date(), new Date('2030-01-01'))
    await utimes(initrd, new Date(), new Date('2001-01-01'))
    // FAT keeps 2-second times (and 10 ms creation times): make "now" differ between the two builds.
    await new Promise((r) => setTimeout(r, 2100))
    const r2 = await makeIso({...opts, output: join(b, 'x.iso')})
    expect(r2.sha256).toBe(r1.sha256)
    expect(await readFile(join(a, 'x.iso'))).toEqual(await readFile(join(b, 'x.iso')))
    const r3 = await makeIso({...opts, sourceDateEpoch: 1700000001, output: join(b, 'y.iso')})
    expect(r3.sha256).not.toBe(r1.sha256)
    expect(r1.cmdline).toBe('console=tty0 console=ttyS0,115200n8 boot_method=vmedia ipa-insecure=1 nofb')
  }, 60_000)
})

describe('makeIso: bad input fails clearly and leaves nothing behind', () => {
  let out: string
  beforeAll(async () => {
    out = join(dir, 'bad')
    await mkdir(out)
  })
  const leftovers = async () => (await readdir(out)).filter((f) => f !== 'keep')

  it('missing kernel or initramfs', async () => {
    await expect(makeIso({kernel: join(dir, 'nope'), initrd, output: join(out, 'a.iso')})).rejects.toThrow(/kernel .*nope does not exist/)
    await expect(makeIso({kernel, initrd: join(dir, 'nope.img'), output: join(out, 'a.iso')})).rejects.toThrow(/initramfs .*nope\.img does not exist/)
    await expect(makeIso({kernel: dir, initrd, output: join(out, 'a.iso')})).rejects.toThrow(/is not a regular file/)
    await writeFile(join(dir, 'text-kernel'), 'hello, not a kernel\n')
    await expect(makeIso({kernel: join(dir, 'text-kernel'), initrd, output: join(out, 'a.iso')})).rejects.toThrow(/is not a Linux kernel image/)
    expect(await leftovers()).toEqual([])
  })

  it('an initramfs that is not a cpio archive (bare or compressed)', async () => {
    await writeFile(join(dir, 'junk.img'), Buffer.alloc(4096, 7))
    await expect(makeIso({kernel, initrd: join(dir, 'junk.img'), output: join(out, 'a.iso')})).rejects.toThrow(/junk\.img is not a cpio archive/)
    await writeFile(join(dir, 'junk.gz'), gzipSync(Buffer.alloc(4096, 7)))
    await expect(makeIso({kernel, initrd: join(dir, 'junk.gz'), output: join(out, 'a.iso')})).rejects.toThrow(
      /junk\.gz is gzip-compressed but its content is not a cpio archive/,
    )
    await expect(checkInitrd(initrd)).resolves.toBeUndefined()
    expect(await leftovers()).toEqual([])
  })

  it('an output that cannot be written: missing directory, a file as directory, a directory as output', async () => {
    await expect(makeIso({kernel, initrd, output: join(out, 'missing', 'a.iso')})).rejects.toThrow(/cannot write .*a\.iso: .*missing does not exist/)
    await writeFile(join(out, 'keep'), 'x')
    await expect(makeIso({kernel, initrd, output: join(out, 'keep', 'a.iso')})).rejects.toThrow(/cannot write .*: .*keep is not a directory/)
    await mkdir(join(out, 'adir'))
    await expect(makeIso({kernel, initrd, output: join(out, 'adir')})).rejects.toThrow(/cannot write .*adir: it is a directory/)
    await rm(join(out, 'adir'), {recursive: true})
    expect(await leftovers()).toEqual([])
  })

  it('a label with no usable character is refused before any work', async () => {
    await expect(makeIso({kernel, initrd, output: join(out, 'a.iso'), label: '!!!'})).rejects.toThrow(/volume label '!!!' has no usable characters/)
    expect(await leftovers()).toEqual([])
  })

  it('kernel arguments a boot menu cannot carry, and labels', () => {
    expect(() => kernelArgWords(['ok=1', 'bad=$x'])).toThrow(ArtefactError)
    expect(() => kernelArgWords(['two\nlines'])).toThrow(/cannot be baked into a boot menu/)
    expect(() => kernelArgWords({quoted: 'a b'})).not.toThrow()
    expect(bootCmdline(['boot_method=vmedia'], ['console=ttyS1,9600'])).toBe('boot_method=vmedia console=ttyS1,9600')
    expect(volumeLabel('rdk-tiny')).toBe('RDK_TINY')
    expect(() => volumeLabel('...')).toThrow(/no usable characters/)
  })

  it('Secure Boot needs Debian’s signed shim and GRUB: used when installed, else a clear error', async () => {
    const installed = existsSync('/usr/lib/shim/shimx64.efi.signed') && existsSync('/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed')
    const p = makeIso({kernel, initrd, output: join(out, 'sb.iso'), secureBoot: true})
    if (installed) {
      const r = await p
      expect(r.secureBoot).toBe(true)
      await rm(join(out, 'sb.iso'))
    } else {
      await expect(p).rejects.toThrow(/install the Debian package '(shim-signed|grub-efi-amd64-signed)'/)
    }
    expect(await leftovers()).toEqual([])
  })

  it('rdk iso: a bad input exits 2 with the message and writes nothing', async () => {
    const r = await run(process.execPath, ['bin/run.js', 'iso', '--kernel', join(dir, 'nope'), '--initrd', initrd, '--output', join(out, 'cli.iso')], {
      allowFailure: true,
    })
    expect(r.exitCode).toBe(2)
    expect(r.stderr).toMatch(/kernel .*nope does not exist/)
    const ok = await run(process.execPath, [
      'bin/run.js',
      'iso',
      '--kernel',
      kernel,
      '--initrd',
      initrd,
      '--output',
      join(out, 'cli.iso'),
      '--kernel-arg',
      'a=b',
    ])
    expect(ok.stdout).toMatch(/cli\.iso .* sha256:[0-9a-f]{64}\nlabel RDK; kernel command line: console=tty0 console=ttyS0,115200n8 boot_method=vmedia a=b/)
    await rm(join(out, 'cli.iso'))
    expect(await leftovers()).toEqual([])
  }, 60_000)
})
