import {Flags} from '@oclif/core'
import {makeIso} from '../artefacts/iso.js'
import {RdkCommand} from './base.js'

export default class Iso extends RdkCommand {
  static override summary = 'Make a hybrid BIOS + UEFI boot ISO (CD and USB stick / disk) from any kernel and initramfs'
  static override description =
    "Like IPA's iso-image-create: ISOLINUX for BIOS, GRUB in an ESP image (EFI/BOOT/BOOTX64.EFI) for UEFI, isohybrid. " +
    'Every boot menu gets console=tty0 console=ttyS0,115200n8 boot_method=vmedia and the --kernel-arg words. ' +
    'Reproducible: all timestamps are --source-date-epoch. The ISO is written atomically. See docs/artefacts.md.'
  static override examples = [
    '<%= config.bin %> iso --kernel out/rdk-tiny.kernel --initrd out/rdk-tiny.initramfs --output out/rdk-tiny.iso',
    '<%= config.bin %> iso --kernel vmlinuz --initrd initrd.img --output ipa.iso --kernel-arg ipa-api-url=http://ironic:6385 --label IPA',
    '<%= config.bin %> iso --kernel vmlinuz --initrd initrd.img --output sb.iso --secure-boot',
  ]
  static override flags = {
    kernel: Flags.string({description: 'kernel image (bzImage)', required: true}),
    initrd: Flags.string({description: 'initramfs (cpio, optionally compressed)', required: true}),
    output: Flags.string({description: 'ISO file to write', required: true}),
    'kernel-arg': Flags.string({description: 'kernel command-line word K=V (or K) baked into every boot menu (repeatable)', multiple: true}),
    label: Flags.string({description: 'ISO 9660 volume label', default: 'RDK'}),
    title: Flags.string({description: 'boot menu title [default: the ISO file name without .iso]'}),
    'secure-boot': Flags.boolean({description: "UEFI through Debian's signed shim and GRUB (packages shim-signed, grub-efi-amd64-signed)"}),
    shim: Flags.string({
      description: 'signed shim to use with --secure-boot instead of the installed /usr/lib/shim/shimx64.efi.signed',
      dependsOn: ['signed-grub'],
    }),
    'signed-grub': Flags.string({description: 'signed GRUB (gcdx64.efi.signed) to use with --secure-boot instead of the installed one', dependsOn: ['shim']}),
    'source-date-epoch': Flags.integer({description: 'timestamp (seconds) of every file [default: $SOURCE_DATE_EPOCH, else 2024-01-01]'}),
    timeout: Flags.integer({description: 'boot menu timeout in seconds', default: 1}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Iso)
    const r = await makeIso({
      kernel: flags.kernel,
      initrd: flags.initrd,
      output: flags.output,
      kernelArgs: flags['kernel-arg'] ?? [],
      label: flags.label,
      title: flags.title,
      secureBoot: flags.shim && flags['signed-grub'] ? {shim: flags.shim, grub: flags['signed-grub']} : flags['secure-boot'],
      sourceDateEpoch: flags['source-date-epoch'],
      timeout: flags.timeout,
    })
    this.log(`${r.path}  ${(r.size / 1e6).toFixed(1)} MB  sha256:${r.sha256}`)
    this.log(`label ${r.label}${r.secureBoot ? ', Secure Boot (signed shim + GRUB)' : ''}; kernel command line: ${r.cmdline}`)
  }
}
