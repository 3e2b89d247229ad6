/**
 * A hybrid boot ISO from any kernel + initramfs (what IPA's iso-image-create does), built with
 * Debian's xorriso, ISOLINUX and GRUB:
 *
 * - BIOS: ISOLINUX (El Torito, no emulation) reads /isolinux/isolinux.cfg.
 * - UEFI: an ESP image (/boot/efi.img, FAT, El Torito alternate boot entry and a GPT partition)
 *   holding `EFI/BOOT/BOOTX64.EFI`: a GRUB built with grub-mkimage, all modules it needs built in
 *   (nothing is loaded from disk), whose embedded config `search`es this ISO's marker file and reads
 *   the ISO's /boot/grub/grub.cfg. With `secureBoot`, Debian's signed shim is BOOTX64.EFI and the
 *   signed GRUB (`gcdx64.efi.signed`) is `grubx64.efi`; that GRUB finds the ISO through
 *   /.disk/info and reads the same /boot/grub/grub.cfg.
 * - isohybrid: ISOLINUX's MBR (isohdpfx.bin) and a GPT entry for the ESP, so the same file boots
 *   as a CD and written to a USB stick / disk, under SeaBIOS and OVMF.
 * - Every boot menu carries the same command line: consoles, `boot_method=vmedia` (Ironic's
 *   virtual-media convention) and the caller's kernel arguments.
 *
 * Reproducible: all timestamps come from SOURCE_DATE_EPOCH (xorriso derives the volume dates, the
 * volume UUID and the GPT GUIDs from it; mtools stamps the ESP with it), the ESP has a fixed serial
 * (mkfs.vfat --invariant -i), GRUB images are built without timestamps, inputs are sorted.
 */
import {createHash} from 'node:crypto'
import {copyFile, mkdir, mkdtemp, rm, stat, truncate, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {basename, join, resolve} from 'node:path'
import {sourceDateEpochFromEnv} from '../common/defaults.js'
import {run} from '../common/exec.js'
import {
  ArtefactError,
  atomicOutput,
  bootCmdline,
  bootFile,
  checkInitrd,
  checkKernel,
  kernelArgWords,
  renderTemplate,
  setTimes,
  sha256File,
  volumeLabel,
  type KernelArgs,
} from './common.js'

/**
 * GRUB modules built into the EFI image: file systems and partition tables to find the ISO on a CD
 * or a disk, `linux` to boot, serial console, and the config commands.
 */
export const GRUB_ISO_MODULES = [
  'part_gpt',
  'part_msdos',
  'iso9660',
  'fat',
  'search',
  'search_fs_file',
  'search_label',
  'configfile',
  'normal',
  'linux',
  'echo',
  'test',
  'serial',
  'terminal',
  'efi_gop',
  'efi_uga',
  'all_video',
  'boot',
  'gzio',
  'reboot',
  'halt',
] as const

export interface IsoOptions {
  kernel: string
  initrd: string
  /** The ISO file to write (atomically). */
  output: string
  /** Baked into every boot menu after the consoles and `boot_method=vmedia`. */
  kernelArgs?: KernelArgs
  /** ISO 9660 volume label (default RDK). */
  label?: string
  /** Boot menu title (default: the output's base name). */
  title?: string
  /** Seconds since the epoch for every timestamp (default $SOURCE_DATE_EPOCH, else 2024-01-01). */
  sourceDateEpoch?: number
  /**
   * UEFI through Debian's signed shim + GRUB: true takes them from the installed packages
   * (shim-signed, grub-efi-amd64-signed); or name the two files (e.g. unpacked from the .debs with
   * `dpkg-deb -x`, without installing them).
   */
  secureBoot?: boolean | {shim: string; grub: string}
  /** Boot menu timeout in seconds (default 1). */
  timeout?: number
  /** Scratch directory parent (default the OS temp dir). */
  workDir?: string
  log?: (line: string) => void
}

export interface IsoResult {
  path: string
  size: number
  sha256: string
  label: string
  /** The kernel command line of every boot menu. */
  cmdline: string
  secureBoot: boolean
}

/** The epoch from the option, else $SOURCE_DATE_EPOCH, else 2024-01-01. */
export function resolveEpoch(epoch?: number): number {
  if (epoch !== undefined) return epoch
  return sourceDateEpochFromEnv(process.env)
}

/** mkfs.vfat + mtools: a FAT image of `size` bytes holding `files` (image path → host path). */
export async function makeFatImage(image: string, files: [string, string][], epoch: number, label = 'RDK_ESP'): Promise<void> {
  let bytes = 0
  for (const [, src] of files) bytes += (await stat(src)).size
  // FAT12/16 overhead, directories and cluster slack; whole MiB, at least 2.
  const size = Math.max(2, Math.ceil((bytes * 1.05 + 512 * 1024) / (1024 * 1024))) * 1024 * 1024
  await writeFile(image, '')
  await truncate(image, size)
  // FAT stores local time: pin the zone, or the bytes would depend on the machine's TZ.
  const env = {SOURCE_DATE_EPOCH: String(epoch), MTOOLS_SKIP_CHECK: '1', TZ: 'UTC'}
  await run('mkfs.vfat', ['--invariant', '-i', 'D15C0B07', '-n', label, image], {env})
  const dirs = [
    ...new Set(
      files.flatMap(([p]) =>
        p
          .split('/')
          .slice(0, -1)
          .map((_, i, a) => a.slice(0, i + 1).join('/')),
      ),
    ),
  ].sort()
  if (dirs.length) await run('mmd', ['-i', image, ...dirs.map((d) => `::/${d}`)], {env})
  // No `mcopy -m`: the sources' own times (a GRUB image made a moment ago) must not leak in; mtools
  // stamps every entry with SOURCE_DATE_EPOCH instead.
  for (const [p, src] of [...files].sort((a, b) => (a[0] < b[0] ? -1 : 1))) await run('mcopy', ['-i', image, src, `::/${p}`], {env})
}

/** grub-mkimage for x86_64-efi with an embedded early config and the modules built in. */
export async function grubEfiImage(out: string, opts: {earlyConfig?: string; prefix: string; modules: readonly string[]; workDir: string}): Promise<void> {
  await bootFile('grubEfiModules')
  const args = ['-O', 'x86_64-efi', '-o', out, '-p', opts.prefix]
  if (opts.earlyConfig !== undefined) {
    const cfg = join(opts.workDir, `early-${basename(out)}.cfg`)
    await writeFile(cfg, opts.earlyConfig)
    args.push('-c', cfg)
  }
  await run('grub-mkimage', [...args, ...opts.modules])
}

/** A path on the right of a -graft-points `=`: xorriso treats `\\` and `=` specially. */
function graftPath(p: string): string {
  return p.replace(/\\/g, '\\\\').replace(/=/g, '\\=')
}

/** Build the ISO. Checks its inputs first; leaves no partial file behind on any error. */
export async function makeIso(opts: IsoOptions): Promise<IsoResult> {
  const kernel = resolve(opts.kernel)
  const initrd = resolve(opts.initrd)
  const output = resolve(opts.output)
  await checkKernel(kernel)
  await checkInitrd(initrd)
  const label = volumeLabel(opts.label ?? 'RDK')
  const title = opts.title ?? basename(output).replace(/\.iso$/i, '')
  if (!/^[\w.+-]{1,64}$/.test(title)) throw new ArtefactError(`boot menu title '${title}' must be 1–64 of letters, digits, '.', '_', '+', '-'`)
  const user = kernelArgWords(opts.kernelArgs)
  const cmdline = bootCmdline(['boot_method=vmedia'], user)
  const epoch = resolveEpoch(opts.sourceDateEpoch)
  const secureBoot = Boolean(opts.secureBoot)
  const timeout = opts.timeout ?? 1
  const log = opts.log ?? (() => undefined)

  const isolinuxBin = await bootFile('isolinuxBin')
  const mbr = await bootFile('isohybridMbr')
  const ldlinux = await bootFile('ldlinux')
  const given = typeof opts.secureBoot === 'object' ? opts.secureBoot : undefined
  if (given) {
    for (const [what, p] of [
      ['signed shim', given.shim],
      ['signed GRUB', given.grub],
    ] as const) {
      if (
        !(await stat(p).then(
          (st) => st.isFile(),
          () => false,
        ))
      )
        throw new ArtefactError(`${what} ${p} does not exist`)
    }
  }
  const shim = given ? resolve(given.shim) : secureBoot ? await bootFile('shimSigned') : undefined
  const signedGrub = given ? resolve(given.grub) : secureBoot ? await bootFile('grubCdSigned') : undefined

  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), 'rdk-iso-'))
  try {
    return await atomicOutput(output, async (tmp) => {
      const st = join(work, 'iso')
      for (const d of ['isolinux', 'boot/grub', '.disk', 'EFI/BOOT']) await mkdir(join(st, d), {recursive: true})
      // A marker only this ISO carries (its inputs' digest), so GRUB finds this medium, not another one.
      const k = await sha256File(kernel)
      const i = await sha256File(initrd)
      const id = createHash('sha256').update([k.sha256, i.sha256, cmdline, label, title].join('\n')).digest('hex').slice(0, 16)
      const marker = `/.disk/rdk-${id}`
      await writeFile(join(st, marker), `${title}\n`)
      await writeFile(join(st, '.disk/info'), `${title} (${label}) built by rdk\n`)
      await copyFile(isolinuxBin, join(st, 'isolinux/isolinux.bin'))
      await copyFile(ldlinux, join(st, 'isolinux/ldlinux.c32'))
      const menu = {title, kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', append: cmdline}
      await writeFile(
        join(st, 'isolinux/isolinux.cfg'),
        await renderTemplate('syslinux.cfg.ejs', {...menu, purpose: 'ISO, BIOS boot', timeoutDs: timeout * 10, ipappend: false}),
      )
      await writeFile(join(st, 'boot/grub/grub.cfg'), await renderTemplate('grub.cfg.ejs', {...menu, purpose: 'ISO, UEFI boot', timeoutS: timeout}))

      const efi: [string, string][] = []
      if (secureBoot) {
        efi.push(['EFI/BOOT/BOOTX64.EFI', shim!], ['EFI/BOOT/grubx64.efi', signedGrub!])
      } else {
        const grub = join(work, 'bootx64.efi')
        await grubEfiImage(grub, {
          earlyConfig: await renderTemplate('grub-early.cfg.ejs', {marker}),
          prefix: '/boot/grub',
          modules: GRUB_ISO_MODULES,
          workDir: work,
        })
        efi.push(['EFI/BOOT/BOOTX64.EFI', grub])
      }
      // The same loaders in the ISO 9660 tree, for firmware that reads EFI/BOOT from the CD itself.
      for (const [p, src] of efi) await copyFile(src, join(st, p))
      await setTimes(st, epoch)
      await makeFatImage(join(st, 'boot/efi.img'), efi, epoch)
      await setTimes(st, epoch)
      log(`ISO ${label}: ${cmdline}`)

      const env = {SOURCE_DATE_EPOCH: String(epoch), TZ: 'UTC'}
      // The kernel and initramfs are grafted in from where they are (no copy of ~100 MB).
      await run(
        'xorriso',
        [
          '-as',
          'mkisofs',
          '-o',
          tmp,
          '-V',
          label,
          '-iso-level',
          '3',
          '-r',
          '-J',
          '-joliet-long',
          '-isohybrid-mbr',
          mbr,
          '-c',
          'isolinux/boot.cat',
          '-b',
          'isolinux/isolinux.bin',
          '-no-emul-boot',
          '-boot-load-size',
          '4',
          '-boot-info-table',
          '-eltorito-alt-boot',
          '-e',
          'boot/efi.img',
          '-no-emul-boot',
          '-isohybrid-gpt-basdat',
          '--set_all_file_dates',
          `=${epoch}`,
          '-graft-points',
          st,
          `boot/vmlinuz=${graftPath(kernel)}`,
          `boot/initrd.img=${graftPath(initrd)}`,
        ],
        {env},
      )
      const {sha256, size} = await sha256File(tmp)
      return {path: output, size, sha256, label, cmdline, secureBoot}
    })
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}
