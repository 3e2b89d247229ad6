/**
 * A PXE TFTP tree for any kernel + initramfs, meant as the TFTP server's root:
 *
 *   pxelinux.0, ldlinux.c32, pxelinux.cfg/default   BIOS (Debian's pxelinux + syslinux-common);
 *                                                   `IPAPPEND 2` adds BOOTIF=01-<mac>
 *   grubx64.efi, grub/grub.cfg                      UEFI: a GRUB network image (grub-mkimage, efinet +
 *                                                   tftp built in, prefix /grub on the boot server);
 *                                                   BOOTIF=01-$net_default_mac
 *   <name>.kernel, <name>.initramfs                 what both menus boot
 *
 * DHCP hands out `pxelinux.0` to BIOS clients and `grubx64.efi` to UEFI (x86-64) clients.
 */
import {copyFile, mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {basename, join, resolve} from 'node:path'
import {
  ArtefactError,
  atomicOutput,
  bootCmdline,
  bootFile,
  checkInitrd,
  checkKernel,
  kernelArgWords,
  listFiles,
  renderTemplate,
  setTimes,
  type KernelArgs,
} from './common.js'
import {grubEfiImage, resolveEpoch} from './iso.js'

/** GRUB modules built into the network EFI image. */
export const GRUB_NET_MODULES = [
  'efinet',
  'net',
  'tftp',
  'http',
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

/** Boot file names in the tree, for DHCP (and qemu's bootfile=). */
export const PXE_BOOTFILES = {bios: 'pxelinux.0', uefi: 'grubx64.efi'} as const

export interface PxeOptions {
  kernel: string
  initrd: string
  /** The directory to write (replaced atomically if it exists). */
  output: string
  /** File names of kernel and initramfs in the tree (default: <name>.kernel / <name>.initramfs). */
  name?: string
  kernelArgs?: KernelArgs
  sourceDateEpoch?: number
  timeout?: number
  workDir?: string
}

export interface PxeResult {
  path: string
  files: string[]
  cmdline: string
  bootfiles: typeof PXE_BOOTFILES
}

export async function makePxeTree(opts: PxeOptions): Promise<PxeResult> {
  const kernel = resolve(opts.kernel)
  const initrd = resolve(opts.initrd)
  const output = resolve(opts.output)
  await checkKernel(kernel)
  await checkInitrd(initrd)
  const name = opts.name ?? basename(output).replace(/-pxe$/, '')
  if (!/^[A-Za-z0-9][\w.+-]{0,63}$/.test(name)) throw new ArtefactError(`PXE file name '${name}' must be letters, digits, '.', '_', '+', '-'`)
  const user = kernelArgWords(opts.kernelArgs)
  const cmdline = bootCmdline([], user)
  const epoch = resolveEpoch(opts.sourceDateEpoch)
  const timeout = opts.timeout ?? 1
  const pxelinux = await bootFile('pxelinux')
  const ldlinux = await bootFile('ldlinux')
  const kFile = `${name}.kernel`
  const iFile = `${name}.initramfs`
  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), 'rdk-pxe-'))
  try {
    return await atomicOutput(
      output,
      async (tmp) => {
        await mkdir(join(tmp, 'pxelinux.cfg'), {recursive: true})
        await mkdir(join(tmp, 'grub'), {recursive: true})
        await copyFile(pxelinux, join(tmp, PXE_BOOTFILES.bios))
        await copyFile(ldlinux, join(tmp, 'ldlinux.c32'))
        await copyFile(kernel, join(tmp, kFile))
        await copyFile(initrd, join(tmp, iFile))
        const menu = {title: name, kernel: kFile, initrd: iFile}
        await writeFile(
          join(tmp, 'pxelinux.cfg/default'),
          await renderTemplate('syslinux.cfg.ejs', {...menu, append: cmdline, purpose: 'PXE, BIOS boot', timeoutDs: timeout * 10, ipappend: true}),
        )
        await writeFile(
          join(tmp, 'grub/grub.cfg'),
          await renderTemplate('grub.cfg.ejs', {
            ...menu,
            kernel: `/${kFile}`,
            initrd: `/${iFile}`,
            append: `${cmdline} BOOTIF=01-$net_default_mac`,
            purpose: 'PXE, UEFI boot',
            timeoutS: timeout,
          }),
        )
        await grubEfiImage(join(tmp, PXE_BOOTFILES.uefi), {prefix: '/grub', modules: GRUB_NET_MODULES, workDir: work})
        await setTimes(tmp, epoch)
        return {path: output, files: await listFiles(tmp), cmdline, bootfiles: PXE_BOOTFILES}
      },
      {directory: true},
    )
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}
