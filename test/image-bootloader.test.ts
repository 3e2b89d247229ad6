/**
 * image.install_bootloader pieces that run without UEFI firmware, on loop devices this test creates
 * (root required): finding the ESP (by type, by UUID), the loader search (IPA's names, the CSV hint,
 * the grubx64/shimx64 fallback), withMount's clean-up, filling an empty ESP from the root
 * filesystem's /boot/efi/EFI, and the refusal to run efibootmgr on a machine without
 * /sys/firmware/efi (this host has none; the real NVRAM path is test/image-uefi-vm.e2e.test.ts).
 */
import {copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {chmod, mkdir, readdir, readFile, symlink, writeFile} from 'node:fs/promises'
import os from 'node:os'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {
  addUefiBootEntries,
  copyEfiAssetsFromRoot,
  findEfiLoaders,
  findEsp,
  installBootloader,
  parseBootCsv,
  partitionByUuid,
  requireUefiFirmware,
  setupUefi,
  withMount,
} from '../src/agent/image/bootloader.js'
import {run} from '../src/common/exec.js'
import {join, quiet} from './helpers/image.js'
import {attachLoop, detachLoop, type LoopDevice} from './helpers/loop.js'

let dir: string
let L: LoopDevice
let espUuid: string
let rootUuid: string

async function mounts(): Promise<string> {
  return readFile('/proc/self/mounts', 'utf8')
}

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-bl-'))
  L = await attachLoop(dir, 'disk', 96 * 1024 * 1024)
  // GPT: 1 = ESP, 2 = root (ext4). This host's kernel cannot mount vfat (no module), so the ESP
  // carries ext4 here: the code under test never names the filesystem type. The UEFI VM test
  // (test/image-uefi-vm.e2e.test.ts) runs the same code on a real vfat ESP.
  await run('sgdisk', ['-n', '1:0:+24M', '-t', '1:ef00', '-n', '2:0:0', '-t', '2:8300', L.device])
  await run('partprobe', [L.device])
  await run('udevadm', ['settle'], {allowFailure: true})
  await run('mkfs.ext4', ['-q', '-F', '-L', 'ESP', `${L.device}p1`])
  await run('mkfs.ext4', ['-q', '-F', '-L', 'root', `${L.device}p2`])
  espUuid = (await run('blkid', ['-s', 'UUID', '-o', 'value', `${L.device}p1`])).stdout.trim()
  rootUuid = (await run('blkid', ['-s', 'UUID', '-o', 'value', `${L.device}p2`])).stdout.trim()
})

afterAll(async () => {
  if (L) await detachLoop(L)
  rmSync(dir, {recursive: true, force: true})
})

describe('withMount', () => {
  it('mounts, unmounts and removes its directory, also when the callback fails', async () => {
    let seen = ''
    await withMount(`${L.device}p2`, async (d) => {
      seen = d
      expect(await mounts()).toContain(` ${d} ext4 `)
    })
    expect(await mounts()).not.toContain(` ${seen} `)
    expect(existsSync(seen)).toBe(false)
    await expect(
      withMount(`${L.device}p2`, async (d) => {
        seen = d
        throw new Error('boom')
      }),
    ).rejects.toThrow('boom')
    expect(await mounts()).not.toContain(` ${seen} `)
    expect(existsSync(seen)).toBe(false)
  })

  it('a device that does not mount is a clear error and leaves nothing behind', async () => {
    const before = (await readdir(os.tmpdir())).filter((f) => f.startsWith('rdk-mnt-')).length
    await expect(withMount(`${dir}/no-such-device`, async () => 1)).rejects.toThrow(/Unable to mount .*no-such-device/)
    expect((await readdir(os.tmpdir())).filter((f) => f.startsWith('rdk-mnt-')).length).toBe(before)
  })
})

describe('ESP discovery', () => {
  it('finds the ESP by its partition type, and partitions by filesystem or partition UUID', async () => {
    const esp = await findEsp(L.device)
    expect(esp).toMatchObject({device: `${L.device}p1`, number: 1, label: 'gpt'})
    expect((await partitionByUuid(L.device, rootUuid)).device).toBe(`${L.device}p2`)
    expect((await partitionByUuid(L.device, espUuid.toLowerCase())).number).toBe(1)
    const partuuid = (await run('blkid', ['-p', '-s', 'PART_ENTRY_UUID', '-o', 'value', `${L.device}p2`])).stdout.trim()
    expect((await partitionByUuid(L.device, partuuid.toUpperCase())).number).toBe(2)
    await expect(partitionByUuid(L.device, '00000000-1111-2222-3333-444444444444')).rejects.toMatchObject({type: 'DeviceNotFound', code: 404})
  })

  it("without an ESP type, only efi_system_part_uuid finds it; with neither, IPA's DeviceNotFound", async () => {
    const M = await attachLoop(dir, 'mbr', 32 * 1024 * 1024)
    try {
      await run('sfdisk', ['-q', M.device], {input: 'label: dos\nstart=2048, size=20480, type=83\n'})
      await run('partprobe', [M.device])
      await run('mkfs.ext4', ['-q', '-F', `${M.device}p1`])
      const uuid = (await run('blkid', ['-s', 'UUID', '-o', 'value', `${M.device}p1`])).stdout.trim()
      await expect(findEsp(M.device)).rejects.toThrow(/No EFI partition could be detected on device .* Are you using a UEFI-compatible image\?/)
      expect(await findEsp(M.device, uuid)).toMatchObject({device: `${M.device}p1`, number: 1})
    } finally {
      await detachLoop(M)
    }
  })
})

describe('EFI loader search', () => {
  it("IPA's default loader names, the CSV hint alone, the distribution loaders as a fallback", async () => {
    const d = mkdtempSync(join(dir, 'esp-'))
    expect(await findEfiLoaders(d)).toEqual([])
    await mkdir(join(d, 'EFI/debian'), {recursive: true})
    await writeFile(join(d, 'EFI/debian/grubx64.efi'), 'grub')
    expect(await findEfiLoaders(d)).toEqual(['EFI/debian/grubx64.efi'])
    await writeFile(join(d, 'EFI/debian/shimx64.efi'), 'shim')
    expect(await findEfiLoaders(d)).toEqual(['EFI/debian/shimx64.efi'])
    await mkdir(join(d, 'EFI/BOOT'), {recursive: true})
    await writeFile(join(d, 'EFI/BOOT/BOOTX64.EFI'), 'x', {mode: 0o755})
    await writeFile(join(d, 'EFI/BOOT/notes.txt'), 'x', {mode: 0o755})
    expect(await findEfiLoaders(d)).toEqual(['EFI/BOOT/BOOTX64.EFI'])
    // Not executable: IPA skips it (os.access X_OK).
    await chmod(join(d, 'EFI/BOOT/BOOTX64.EFI'), 0o644)
    expect(await findEfiLoaders(d)).toEqual(['EFI/debian/shimx64.efi'])
    const csv = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('shimx64.efi,debian,,This is the boot entry for debian\n', 'utf16le')])
    await writeFile(join(d, 'EFI/debian/BOOTX64.CSV'), csv)
    expect(await findEfiLoaders(d)).toEqual(['EFI/debian/BOOTX64.CSV'])
    expect(parseBootCsv(csv)).toEqual({loader: 'shimx64.efi', label: 'debian'})
    expect(() => parseBootCsv(Buffer.from('nonsense', 'utf16le'))).toThrow(/Malformed EFI boot CSV/)
  })

  it('on a mounted ESP', async () => {
    await withMount(`${L.device}p1`, async (d) => {
      await mkdir(join(d, 'EFI/BOOT'), {recursive: true})
      await writeFile(join(d, 'EFI/BOOT/BOOTX64.EFI'), 'loader', {mode: 0o755})
      expect(await findEfiLoaders(d)).toEqual(['EFI/BOOT/BOOTX64.EFI'])
      await run('rm', ['-r', join(d, 'EFI')])
    })
  })
})

describe('filling an empty ESP from the root filesystem', () => {
  it('copies /boot/efi/EFI of the image, without following symlinks out of it', async () => {
    const outside = join(dir, 'outside-secret')
    await writeFile(outside, 'ramdisk secret')
    await withMount(`${L.device}p2`, async (root) => {
      await mkdir(join(root, 'boot/efi/EFI/BOOT'), {recursive: true})
      await writeFile(join(root, 'boot/efi/EFI/BOOT/BOOTX64.EFI'), 'the image loader', {mode: 0o755})
      await writeFile(join(root, 'boot/efi/EFI/BOOT/grub.cfg'), 'set timeout=0\n')
      await symlink(outside, join(root, 'boot/efi/EFI/BOOT/leak'))
      await withMount(`${L.device}p1`, async (esp) => {
        expect(await findEfiLoaders(esp)).toEqual([])
        expect(await copyEfiAssetsFromRoot(root, esp, quiet)).toBe(true)
        expect(await findEfiLoaders(esp)).toEqual(['EFI/BOOT/BOOTX64.EFI'])
        expect(await readFile(join(esp, 'EFI/BOOT/BOOTX64.EFI'), 'utf8')).toBe('the image loader')
        expect(existsSync(join(esp, 'EFI/BOOT/leak'))).toBe(false)
        await run('rm', ['-r', join(esp, 'EFI')])
      })
      // A /boot/efi that is a symlink (e.g. to the ramdisk's /) is not followed.
      await run('rm', ['-r', join(root, 'boot/efi')])
      await symlink('/', join(root, 'boot/efi'))
      expect(await copyEfiAssetsFromRoot(root, dir, quiet)).toBe(false)
      await run('rm', [join(root, 'boot/efi')])
    })
  })
})

describe('without UEFI firmware', () => {
  it('refuses to touch NVRAM: efibootmgr never runs', async () => {
    expect(existsSync('/sys/firmware/efi')).toBe(false) // this host has none; the UEFI VM test covers the real path
    expect(() => requireUefiFirmware()).toThrow(/did not boot in UEFI mode \(\/sys\/firmware\/efi does not exist\)/)
    await expect(addUefiBootEntries({disk: L.device, partition: 1, loaders: ['EFI/BOOT/BOOTX64.EFI'], log: quiet})).rejects.toThrow(/did not boot in UEFI mode/)
  })

  it('image.install_bootloader in UEFI mode fails clearly, or logs and succeeds with ignore_bootloader_failure', async () => {
    const ctx = {config: defaultConfig(), log: quiet, installDevice: async () => L.device, imageType: 'partition' as const}
    const args = {root_uuid: rootUuid, efi_system_part_uuid: espUuid, target_boot_mode: 'uefi'}
    await expect(installBootloader(ctx, args)).rejects.toMatchObject({
      type: 'CommandExecutionError',
      details: expect.stringMatching(/did not boot in UEFI mode/),
    })
    await expect(installBootloader(ctx, {...args, ignore_bootloader_failure: true})).resolves.toBeNull()
    await expect(installBootloader({...ctx, config: {...defaultConfig(), ignoreBootloaderFailure: true}}, args)).resolves.toBeNull()
    // The API client's explicit false wins over the agent setting, as in IPA.
    await expect(
      installBootloader({...ctx, config: {...defaultConfig(), ignoreBootloaderFailure: true}}, {...args, ignore_bootloader_failure: false}),
    ).rejects.toThrow(/UEFI mode/)
  })

  it('with a firmware directory present, an empty ESP and an image with neither loader files nor grub-install is a clear error', async () => {
    const fw = mkdtempSync(join(dir, 'fw-'))
    const ctx = {config: defaultConfig(), log: quiet, installDevice: async () => L.device, imageType: 'partition' as const, firmwareDir: fw}
    await expect(setupUefi(ctx, L.device, {root_uuid: rootUuid, efi_system_part_uuid: espUuid, target_boot_mode: 'uefi'})).rejects.toThrow(
      /No EFI boot loader found on the EFI system partition .*p1 of .*, and none could be installed from the image: the image has no \/boot\/efi\/EFI; the image has no grub-install or grub2-install/,
    )
    // Nothing stays mounted.
    expect(await mounts()).not.toContain(L.device)
  })
})

describe('BIOS', () => {
  const ctx = () => ({
    config: {...defaultConfig(), enableBiosBootloaderInstall: true},
    log: quiet,
    installDevice: async () => L.device,
    imageType: 'partition' as const,
  })
  it('whole-disk images and the default setting install nothing', async () => {
    await expect(installBootloader({...ctx(), imageType: 'whole-disk'}, {root_uuid: '0x1234abcd', target_boot_mode: 'bios'})).resolves.toBeNull()
    await expect(installBootloader({...ctx(), config: defaultConfig()}, {root_uuid: rootUuid, target_boot_mode: 'bios'})).resolves.toBeNull()
  })
  it('a partition image without grub-install is a clear error naming what is missing', async () => {
    await expect(installBootloader(ctx(), {root_uuid: rootUuid, target_boot_mode: 'bios'})).rejects.toThrow(
      /Cannot install GRUB for BIOS boot on .*: the image on .*p2 has no grub-install or grub2-install/,
    )
    await expect(installBootloader(ctx(), {root_uuid: rootUuid, target_boot_mode: 'floppy'})).rejects.toMatchObject({type: 'InvalidCommandParamsError'})
  })
})

/**
 * The grub-install paths, with an image whose grub-install / grub-mkconfig are shell scripts (static
 * busybox) that log how they were called and what they saw: the chroot, the bind mounts, the ESP at
 * /boot/efi, the arguments. (The real GRUB path needs a distribution image; the UEFI VM test covers
 * the loader-copy path with a real GRUB.)
 */
describe('grub-install in a chroot of the image', () => {
  let G: LoopDevice
  let gEsp: string
  let gRoot: string
  const script = (lines: string[]) => ['#!/bin/sh', 'B=/bin/busybox', ...lines, ''].join('\n')

  beforeAll(async () => {
    G = await attachLoop(dir, 'grub', 96 * 1024 * 1024)
    await run('sgdisk', ['-n', '1:0:+24M', '-t', '1:ef00', '-n', '2:0:0', '-t', '2:8300', G.device])
    await run('partprobe', [G.device])
    await run('udevadm', ['settle'], {allowFailure: true})
    const img = join(dir, 'grub-root')
    for (const d of ['bin', 'usr/sbin', 'dev', 'proc', 'sys', 'boot/efi', 'boot/grub', 'etc']) mkdirSync(join(img, d), {recursive: true})
    copyFileSync('/bin/busybox', join(img, 'bin/busybox'))
    symlinkSync('busybox', join(img, 'bin/sh'))
    writeFileSync(
      join(img, 'usr/sbin/grub-install'),
      script([
        'echo "grub-install $*" >> /grub.log',
        '$B test -e /proc/self/status && echo proc-ok >> /grub.log',
        '$B test -e /sys/kernel && echo sys-ok >> /grub.log',
        '$B grep -q " /boot/efi " /proc/mounts && echo esp-mounted >> /grub.log',
        'case "$*" in *x86_64-efi*)',
        '  case "$*" in *--removable*) $B mkdir -p /boot/efi/EFI/BOOT && echo grub > /boot/efi/EFI/BOOT/BOOTX64.EFI && $B chmod 755 /boot/efi/EFI/BOOT/BOOTX64.EFI ;;',
        '  *) $B mkdir -p /boot/efi/EFI/debian && echo grub > /boot/efi/EFI/debian/grubx64.efi ;; esac ;;',
        'esac',
      ]),
      {mode: 0o755},
    )
    writeFileSync(
      join(img, 'usr/sbin/grub-mkconfig'),
      script(['echo "grub-mkconfig $* os-prober=$GRUB_DISABLE_OS_PROBER" >> /grub.log', 'echo generated > "$2"']),
      {mode: 0o755},
    )
    await run('mkfs.ext4', ['-q', '-F', '-L', 'ESP', `${G.device}p1`]) // stand-in for vfat (see above)
    await run('mkfs.ext4', ['-q', '-F', '-L', 'groot', '-d', img, `${G.device}p2`])
    gEsp = (await run('blkid', ['-s', 'UUID', '-o', 'value', `${G.device}p1`])).stdout.trim()
    gRoot = (await run('blkid', ['-s', 'UUID', '-o', 'value', `${G.device}p2`])).stdout.trim()
  })
  afterAll(async () => {
    if (G) await detachLoop(G)
  })

  it('UEFI, empty ESP, no /boot/efi/EFI in the image: grub-install --target=x86_64-efi --no-nvram (and --removable) fills the ESP', async () => {
    const fw = mkdtempSync(join(dir, 'fw-'))
    const ctx = {config: defaultConfig(), log: quiet, installDevice: async () => G.device, imageType: 'partition' as const, firmwareDir: fw}
    // Everything up to efibootmgr runs; efibootmgr itself refuses on this host (no /sys/firmware/efi).
    await expect(setupUefi(ctx, G.device, {root_uuid: gRoot, efi_system_part_uuid: gEsp, target_boot_mode: 'uefi'})).rejects.toThrow(
      /did not boot in UEFI mode/,
    )
    expect(await readFile('/proc/self/mounts', 'utf8')).not.toContain(G.device)
    await withMount(`${G.device}p2`, async (root) => {
      expect((await readFile(join(root, 'grub.log'), 'utf8')).split('\n')).toEqual([
        'grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram',
        'proc-ok',
        'sys-ok',
        'esp-mounted',
        'grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --removable',
        'proc-ok',
        'sys-ok',
        'esp-mounted',
        'grub-mkconfig -o /boot/grub/grub.cfg os-prober=true',
        '',
      ])
      expect(await readFile(join(root, 'boot/grub/grub.cfg'), 'utf8')).toBe('generated\n')
      expect(await readdir(join(root, 'boot/efi'))).toEqual([]) // the ESP was mounted there, not written into the root
      await run('rm', [join(root, 'grub.log')])
    })
    await withMount(`${G.device}p1`, async (esp) => {
      expect(await findEfiLoaders(esp)).toEqual(['EFI/BOOT/BOOTX64.EFI'])
      expect(await readFile(join(esp, 'EFI/debian/grubx64.efi'), 'utf8')).toBe('grub\n')
    })
  })

  it('BIOS with ipa-enable-bios-bootloader-install: grub-install --target=i386-pc <disk> and grub-mkconfig in the chroot', async () => {
    const ctx = {
      config: {...defaultConfig(), enableBiosBootloaderInstall: true},
      log: quiet,
      installDevice: async () => G.device,
      imageType: 'partition' as const,
    }
    await expect(installBootloader(ctx, {root_uuid: gRoot, target_boot_mode: 'bios'})).resolves.toBeNull()
    await withMount(`${G.device}p2`, async (root) => {
      expect((await readFile(join(root, 'grub.log'), 'utf8')).split('\n')).toEqual([
        `grub-install --target=i386-pc ${G.device}`,
        'proc-ok',
        'sys-ok',
        'grub-mkconfig -o /boot/grub/grub.cfg os-prober=true',
        '',
      ])
    })
    expect(await readFile('/proc/self/mounts', 'utf8')).not.toContain(G.device)
  })
})
