/**
 * `rdk boot`: what the command's flags mean, turned into a VM on this terminal.
 *
 * Artefacts are found as `rdk build` writes them (`<output>/<name>.kernel`, `<output>/<name>.initramfs`)
 * unless --kernel/--initrd name files. --iso, --pxe and --ipxe boot the boot artefacts through the
 * firmware instead (SeaBIOS, or OVMF with --uefi), as a real machine would. The serial console is this terminal (qemu's mux: Ctrl-A x
 * quits, Ctrl-A c is the monitor); rdk's own lines go to stderr before qemu starts.
 */
import {readFile, stat} from 'node:fs/promises'
import {join, resolve} from 'node:path'
import {PXE_BOOTFILES} from '../artefacts/pxe.js'
import {
  AGENT_PORT,
  BootError,
  guestUrl,
  formatCommand,
  parsePortForward,
  qemuArgs,
  resolveVm,
  startVm,
  type Accel,
  type DiskBus,
  type FirmwareBoot,
  type VmOptions,
} from './qemu.js'

export interface BootCliOptions {
  kernel?: string
  initrd?: string
  /** Boot this ISO (as a CD, or as a disk with isoAs 'disk'). */
  iso?: string
  isoAs?: 'cdrom' | 'disk'
  /** Boot this PXE tree over qemu's TFTP (pxelinux.0, or grubx64.efi with uefi). */
  pxe?: string
  /** Boot this iPXE script URL (BIOS; 127.0.0.1/localhost is rewritten to 10.0.2.2 for the guest). */
  ipxe?: string
  output: string
  name: string
  append?: string
  memory: number
  cpus: number
  disks: string[]
  diskSize?: string
  diskBus: DiskBus
  portForwards: string[]
  mac?: string
  serialLog?: string
  uefi: boolean
  /** OVMF with Secure Boot enforced (Microsoft keys): only signed loaders boot. */
  secureBoot?: boolean
  firmware?: string
  accel: Accel | 'auto'
  pvh: boolean
  restrictNetwork: boolean
  reboot: boolean
  qemuArgs: string[]
  dryRun: boolean
  /** Where rdk's own lines go (stderr). */
  say: (line: string) => void
}

async function isFile(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isFile(),
    () => false,
  )
}

/** --iso / --pxe / --ipxe → how the firmware boots (undefined: a kernel boot). */
export function firmwareBootFromCli(
  o: Pick<BootCliOptions, 'iso' | 'isoAs' | 'pxe' | 'ipxe' | 'kernel' | 'initrd' | 'append' | 'uefi' | 'firmware' | 'secureBoot'>,
): FirmwareBoot | undefined {
  const chosen = (['iso', 'pxe', 'ipxe'] as const).filter((k) => o[k] !== undefined)
  if (chosen.length > 1) throw new BootError(`--${chosen.join(' and --')} cannot be combined: boot one thing`)
  if (chosen.length === 0) return undefined
  if (o.kernel || o.initrd || o.append)
    throw new BootError(`--${chosen[0]} boots through the firmware: --kernel/--initrd/--append do not apply (the artefact carries its own kernel command line)`)
  if (o.iso !== undefined) return {kind: 'iso', path: resolve(o.iso), as: o.isoAs ?? 'cdrom'}
  if (o.pxe !== undefined) return {kind: 'tftp', dir: resolve(o.pxe), bootfile: o.uefi || o.firmware || o.secureBoot ? PXE_BOOTFILES.uefi : PXE_BOOTFILES.bios}
  return {kind: 'ipxe', url: guestUrl(o.ipxe!)}
}

/** Flags → VmOptions (artefact paths resolved and checked). */
export async function vmOptionsFromCli(o: BootCliOptions): Promise<VmOptions> {
  if (o.isoAs && o.iso === undefined) throw new BootError('--iso-as needs --iso')
  const boot = firmwareBootFromCli(o)
  if (boot) return {...(await commonVmOptions(o)), boot}
  const kernel = resolve(o.kernel ?? join(o.output, `${o.name}.kernel`))
  const initrd = resolve(o.initrd ?? join(o.output, `${o.name}.initramfs`))
  if (!(await isFile(kernel))) {
    throw new BootError(o.kernel ? `kernel ${kernel} does not exist` : `no kernel at ${kernel}: run 'rdk build' first, or give --kernel (and --initrd)`)
  }
  if (!(await isFile(initrd))) {
    throw new BootError(o.initrd ? `initramfs ${initrd} does not exist` : `no initramfs at ${initrd}: run 'rdk build' first, or give --initrd`)
  }
  // Booting what rdk build wrote: the command line its boot artefacts carry (the manifest's
  // kernelCmdline, e.g. the tiny flavor's root=/dev/ram0) comes first, then --append.
  const built = o.kernel ? undefined : await manifestCmdline(join(o.output, `${o.name}.manifest.json`))
  const append = [built, o.append].filter(Boolean).join(' ') || undefined
  return {kernel, initrd, append, ...(await commonVmOptions(o))}
}

/** kernelCmdline of a build manifest, or undefined when there is none (or it is not readable JSON). */
async function manifestCmdline(path: string): Promise<string | undefined> {
  const text = await readFile(path, 'utf8').catch(() => undefined)
  if (text === undefined) return undefined
  try {
    const v = (JSON.parse(text) as {kernelCmdline?: unknown}).kernelCmdline
    return typeof v === 'string' && v.trim() ? v.trim() : undefined
  } catch {
    throw new BootError(`${path} is not valid JSON: rebuild, or boot with --kernel/--initrd`)
  }
}

async function commonVmOptions(o: BootCliOptions): Promise<VmOptions> {
  if (!Number.isInteger(o.memory) || o.memory < 64) throw new BootError(`--memory is in MiB and must be at least 64, got ${o.memory}`)
  if (!Number.isInteger(o.cpus) || o.cpus < 1) throw new BootError(`--cpus must be at least 1, got ${o.cpus}`)
  const forwards = o.portForwards.length ? o.portForwards.map(parsePortForward) : [{guestPort: AGENT_PORT}]
  return {
    memoryMiB: o.memory,
    cpus: o.cpus,
    disks: o.disks.map((path) => ({path: resolve(path), size: o.diskSize, bus: o.diskBus})),
    portForwards: forwards,
    mac: o.mac,
    serialLogFile: o.serialLog ? resolve(o.serialLog) : undefined,
    interactive: true,
    uefi: o.firmware ? resolve(o.firmware) : o.uefi || Boolean(o.secureBoot),
    secureBoot: o.secureBoot,
    accel: o.accel === 'auto' ? undefined : o.accel,
    pvh: o.pvh,
    restrictNetwork: o.restrictNetwork,
    allowReboot: o.reboot,
    extraArgs: o.qemuArgs,
    onMessage: o.say,
  }
}

/** Boot and wait for qemu to exit; returns its exit code. */
export async function bootFromCli(o: BootCliOptions): Promise<number> {
  const opts = await vmOptionsFromCli(o)
  if (o.dryRun) {
    const r = await resolveVm(opts, {dryRun: true})
    process.stdout.write(`${formatCommand([r.qemu, ...qemuArgs(opts, r)])}\n`)
    return 0
  }
  const vm = await startVm({
    ...opts,
    onLaunch: ({argv, resolved: r}) => {
      const what = opts.boot
        ? opts.boot.kind === 'iso'
          ? `${opts.boot.path} as a ${opts.boot.as === 'disk' ? 'disk' : 'CD'}`
          : opts.boot.kind === 'tftp'
            ? `${opts.boot.bootfile} from ${opts.boot.dir} over TFTP`
            : `${opts.boot.url} through iPXE`
        : `${opts.kernel}${r.pvh ? ' (booted uncompressed, PVH entry)' : ''} + ${opts.initrd}`
      o.say(`rdk boot: ${what}${r.firmware ? ' (UEFI)' : ''}, ${opts.memoryMiB} MiB, ${r.accel}: ${r.accelReason}`)
      for (const f of r.forwards)
        o.say(
          `rdk boot: guest port ${f.guestPort} → 127.0.0.1:${f.hostPort}${f.guestPort === AGENT_PORT ? ` (agent API: http://127.0.0.1:${f.hostPort}/v1/status)` : ''}`,
        )
      o.say('rdk boot: serial console on this terminal: Ctrl-A x quits qemu, Ctrl-A c switches to its monitor')
      o.say(`rdk boot: ${formatCommand(argv)}`)
    },
  })
  const stop = () => void vm.stop()
  process.once('SIGTERM', stop)
  process.once('SIGHUP', stop)
  try {
    const {code, signal} = await vm.exited
    return code ?? (signal ? 128 + 15 : 1)
  } finally {
    process.removeListener('SIGTERM', stop)
    process.removeListener('SIGHUP', stop)
  }
}
