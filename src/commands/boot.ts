import {Flags} from '@oclif/core'
import {bootFromCli} from '../boot/cli.js'
import {DEFAULT_MAC, DEFAULT_MEMORY_MIB} from '../boot/qemu.js'
import {RdkCommand} from './base.js'

export default class Boot extends RdkCommand {
  static override summary = 'Boot a built ramdisk (kernel + initramfs, ISO, PXE tree or iPXE script) in qemu, with the serial console on this terminal'
  static override description =
    'Finds <output>/<name>.kernel and <output>/<name>.initramfs as rdk build writes them, or boots --kernel/--initrd. ' +
    'User-mode networking with a fixed MAC; the agent port 9999 is forwarded from a free 127.0.0.1 port (host ports always bind 127.0.0.1). ' +
    'KVM is used only when it really works (vmx/svm, /dev/kvm and a probe guest), else TCG. ' +
    'Ctrl-A x quits qemu; Ctrl-A c switches to the qemu monitor. See docs/boot.md.'
  static override examples = [
    '<%= config.bin %> boot',
    '<%= config.bin %> boot --output ./out --name rdk-tiny --append "ipa-api-url=http://10.0.2.2:6385 rdk.shell"',
    '<%= config.bin %> boot --kernel vmlinuz --initrd initrd.img --disk /tmp/disk0.qcow2 --disk-size 10G --memory 2048',
    '<%= config.bin %> boot --iso out/rdk-tiny.iso --uefi --iso-as disk',
    '<%= config.bin %> boot --pxe out/rdk-tiny-pxe --uefi',
    '<%= config.bin %> boot --ipxe http://127.0.0.1:8080/rdk-tiny.ipxe',
    '<%= config.bin %> boot --uefi --disk-bus nvme --disk /tmp/d.raw --disk-size 4G --port-forward 9999 --port-forward 2222:22',
  ]
  static override flags = {
    kernel: Flags.string({description: 'kernel to boot [default: <output>/<name>.kernel]'}),
    iso: Flags.string({description: 'boot this ISO through the firmware (SeaBIOS, or OVMF with --uefi) instead of a kernel'}),
    'iso-as': Flags.string({description: 'attach the --iso as a CD or as a disk (the isohybrid USB-stick path)', options: ['cdrom', 'disk']}),
    pxe: Flags.string({description: "PXE-boot this TFTP tree (rdk build --format pxe) with qemu's TFTP server: pxelinux.0, or grubx64.efi with --uefi"}),
    ipxe: Flags.string({description: "boot this iPXE script URL with the NIC's iPXE ROM (BIOS; 127.0.0.1 means this machine)"}),
    initrd: Flags.string({description: 'initramfs to boot [default: <output>/<name>.initramfs]'}),
    output: Flags.string({description: 'directory rdk build wrote the artefacts to', default: 'out'}),
    name: Flags.string({description: 'artefact base name', default: 'rdk-tiny'}),
    append: Flags.string({description: 'extra kernel command-line parameters (console=ttyS0 is always added)'}),
    memory: Flags.integer({description: 'guest RAM in MiB', default: DEFAULT_MEMORY_MIB}),
    cpus: Flags.integer({description: 'virtual CPUs', default: 1}),
    disk: Flags.string({description: 'disk image for the guest (repeatable; *.qcow2 is qcow2, anything else raw)', multiple: true}),
    'disk-size': Flags.string({description: 'create missing --disk files (sparse) with this size, e.g. 10G'}),
    'disk-bus': Flags.string({description: 'how disks attach', options: ['virtio', 'nvme'], default: 'virtio'}),
    'port-forward': Flags.string({
      description: 'forward 127.0.0.1:HOST to guest port GUEST (HOST:GUEST, or GUEST for a free host port; repeatable) [default: 9999]',
      multiple: true,
    }),
    mac: Flags.string({description: `MAC address of the guest NIC [default: ${DEFAULT_MAC}]`}),
    'serial-log': Flags.string({description: 'also write the serial console to this file'}),
    uefi: Flags.boolean({description: "boot with UEFI firmware (OVMF, Debian package 'ovmf')"}),
    'secure-boot': Flags.boolean({
      description: 'UEFI with Secure Boot enforced (OVMF_CODE_4M.ms.fd, Microsoft keys): boot an ISO made with rdk iso --secure-boot',
    }),
    firmware: Flags.string({description: 'UEFI firmware file to use instead of /usr/share/ovmf/OVMF.fd (implies --uefi)'}),
    accel: Flags.string({description: 'accelerator', options: ['auto', 'kvm', 'tcg'], default: 'auto'}),
    pvh: Flags.boolean({
      description: "BIOS boots: start the kernel's uncompressed ELF through its PVH entry (3–4 s faster under TCG)",
      default: true,
      allowNo: true,
    }),
    'restrict-network': Flags.boolean({description: 'the guest may not connect to the host or beyond (DHCP and forwarded ports still work)'}),
    reboot: Flags.boolean({description: 'let the guest reboot (default: qemu exits when the guest reboots)'}),
    'qemu-arg': Flags.string({description: 'extra argument passed to qemu as is (repeatable)', multiple: true}),
    'dry-run': Flags.boolean({description: 'print the qemu command line and exit'}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Boot)
    process.exitCode = await bootFromCli({
      kernel: flags.kernel,
      initrd: flags.initrd,
      iso: flags.iso,
      isoAs: flags['iso-as'] as 'cdrom' | 'disk' | undefined,
      pxe: flags.pxe,
      ipxe: flags.ipxe,
      output: flags.output,
      name: flags.name,
      append: flags.append,
      memory: flags.memory,
      cpus: flags.cpus,
      disks: flags.disk ?? [],
      diskSize: flags['disk-size'],
      diskBus: flags['disk-bus'] as 'virtio' | 'nvme',
      portForwards: flags['port-forward'] ?? [],
      mac: flags.mac,
      serialLog: flags['serial-log'],
      uefi: flags.uefi || Boolean(flags.firmware),
      secureBoot: flags['secure-boot'],
      firmware: flags.firmware,
      accel: flags.accel as 'auto' | 'kvm' | 'tcg',
      pvh: flags.pvh,
      restrictNetwork: flags['restrict-network'],
      reboot: flags.reboot,
      qemuArgs: flags['qemu-arg'] ?? [],
      dryRun: flags['dry-run'],
      say: (line) => process.stderr.write(`${line}\n`),
    })
  }
}
