/**
 * Booting a kernel + initramfs in qemu-system-x86_64, like `mkosi qemu`: for trying a ramdisk by
 * hand (`rdk boot`) and for end-to-end tests (startVm).
 *
 * - Direct kernel boot (`-kernel/-initrd/-append`, `console=ttyS0` always added), SeaBIOS or OVMF.
 * - Or boot the artefacts of issue 4 through the firmware, as a machine would: an ISO as a CD
 *   (`ide-cd`) or as a disk (virtio-blk, the isohybrid path), a PXE tree through qemu's own TFTP
 *   server (`-netdev user,tftp=DIR,bootfile=…`, the NIC's iPXE ROM from Debian's `ipxe-qemu`), or an
 *   iPXE script URL handed out as the DHCP boot file (the BIOS iPXE ROM fetches it over HTTP).
 *   Under SeaBIOS the kernel's uncompressed ELF (unpacked once from the bzImage, cached) boots
 *   through its PVH entry point: same kernel, no real-mode setup or decompressor, 3–4 s sooner
 *   under TCG.
 * - User-mode networking with a fixed MAC; guest ports are forwarded from 127.0.0.1 only (never
 *   another host address). The guest reaches the host's loopback as 10.0.2.2; nothing here ever
 *   sends traffic to that address. `restrictNetwork` cuts the guest off from everything but DHCP and
 *   the forwarded ports.
 * - The serial console is kept in memory (serialLog, waitForSerial), optionally copied to a file,
 *   or (interactive) put on the terminal with qemu's mux: Ctrl-A x quits, Ctrl-A c is the monitor.
 * - Accelerator: KVM only when it really works (the CPU shows vmx/svm, /dev/kvm opens read-write and
 *   a probe guest runs), else TCG. An auto-selected KVM guest that prints nothing on the serial
 *   console in time is restarted under TCG (machines exist where /dev/kvm opens and runs real-mode
 *   code but Linux guests hang at once).
 *
 * qemu is the one long-lived child process rdk starts: it is spawned directly (no shell) with
 * node:child_process, since run() in common/exec.ts is for programs that finish; a missing qemu is
 * the same ToolMissingError run() would raise.
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {createHash} from 'node:crypto'
import {constants as fsConstants, copyFileSync, createWriteStream, existsSync, mkdirSync, rmSync, type WriteStream} from 'node:fs'
import {access, mkdir, mkdtemp, open, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {createServer} from 'node:net'
import {tmpdir} from 'node:os'
import {extname, join} from 'node:path'
import {gunzipSync} from 'node:zlib'
import {UserError} from '../common/errors.js'
import {run, runBuffer, ToolMissingError, which} from '../common/exec.js'
import {defaultCacheDir} from '../debian/packages.js'

export const QEMU = 'qemu-system-x86_64'
export const DEFAULT_MAC = '52:54:00:12:34:56'
export const DEFAULT_MEMORY_MIB = 1024
/** The agent's API port: forwarded by default. */
export const AGENT_PORT = 9999
/** OVMF from Debian's `ovmf` package. */
export const OVMF_PATHS = ['/usr/share/ovmf/OVMF.fd', '/usr/share/qemu/OVMF.fd']

export type Accel = 'kvm' | 'tcg'
export type DiskBus = 'virtio' | 'nvme'

/** rdk boot's bad input (a missing artefact, a bad flag combination): a UserError, exit 2. */
export class BootError extends UserError {
  constructor(message: string) {
    super(message)
    this.name = 'BootError'
  }
}

export interface DiskSpec {
  path: string
  /** Create the file (sparse) with this size if it does not exist: bytes, or "10G"/"512M". */
  size?: number | string
  /** Default: qcow2 for *.qcow2, raw otherwise. */
  format?: 'qcow2' | 'raw'
  /** Default virtio. */
  bus?: DiskBus
}

export interface PortForward {
  /** 127.0.0.1 port on the host; 0 or undefined = a free one. */
  hostPort?: number
  guestPort: number
}

/** How a VM boots when it is not given a kernel: an ISO, or the network. */
export type FirmwareBoot =
  | {kind: 'iso'; path: string; as: 'cdrom' | 'disk'}
  /** qemu's TFTP server serves `dir`; DHCP hands out `bootfile` (pxelinux.0 / grubx64.efi). */
  | {kind: 'tftp'; dir: string; bootfile: string}
  /** DHCP hands out this URL as the boot file; the NIC's iPXE ROM fetches and runs it (BIOS). */
  | {kind: 'ipxe'; url: string}

export interface VmOptions {
  /** Kernel for a direct boot; omit it to boot `boot` through the firmware. */
  kernel?: string
  /** Boot an ISO or over the network instead of -kernel (mutually exclusive with kernel). */
  boot?: FirmwareBoot
  initrd?: string
  /** Extra kernel command-line words; `console=ttyS0` is always added. */
  append?: string
  /** MiB (default 1024). */
  memoryMiB?: number
  /** vCPUs (default 1: under TCG on two host cores a second vCPU competes with the host). */
  cpus?: number
  /** qemu CPU model (default: host under KVM, max under TCG). */
  cpu?: string
  disks?: DiskSpec[]
  /** Default: the agent port (9999) to a free 127.0.0.1 port. An empty list forwards nothing. */
  portForwards?: PortForward[]
  /** NIC MAC address (default 52:54:00:12:34:56). */
  mac?: string
  /** No network device at all. */
  noNetwork?: boolean
  /** Guest may not open connections to the host or beyond (DHCP and forwarded ports still work). */
  restrictNetwork?: boolean
  /** Also write the serial console to this file. */
  serialLogFile?: string
  /** Serial console on this process's terminal (stdin/stdout), qemu monitor on Ctrl-A c. */
  interactive?: boolean
  /**
   * UEFI with Secure Boot enforced: OVMF built with SMM and Microsoft's keys enrolled
   * (`OVMF_CODE_4M.ms.fd` + a private copy of `OVMF_VARS_4M.ms.fd`, Debian `ovmf`) as pflash. Only
   * signed loaders run (Debian's shim → signed GRUB → signed kernel). Implies UEFI.
   */
  secureBoot?: boolean
  /** Boot with OVMF (UEFI): true for the Debian `ovmf` firmware, or a firmware file. */
  uefi?: boolean | string
  /**
   * UEFI with a persistent, writable variable store (NVRAM), without Secure Boot: OVMF_CODE_4M.fd
   * (Debian `ovmf`) as read-only pflash and this file as the variable store, created as a copy of
   * OVMF_VARS_4M.fd when it does not exist and kept afterwards: boot entries the guest writes
   * (efibootmgr) are there at the next boot that names the same file. Implies UEFI.
   */
  uefiVars?: string
  /** Neither a kernel nor `boot`: the firmware boots from the VM's disks (under UEFI: its NVRAM entries, see uefiVars). */
  fromDisk?: boolean
  /**
   * BIOS boots: boot the kernel's uncompressed ELF (extracted once from the bzImage, cached) through
   * its PVH entry point, skipping the real-mode setup and the decompressor: the same kernel, 3–4 s
   * sooner under TCG. Default true; ignored with UEFI (OVMF needs the EFI stub).
   */
  pvh?: boolean
  /** Cache for extracted kernels (default: rdk's cache, $RDK_CACHE_DIR or ~/.cache/rdk). */
  cacheDir?: string
  /** Force an accelerator (also $RDK_QEMU_ACCEL); default: probe. */
  accel?: Accel
  /** When the guest reboots, let qemu reboot it (default: qemu exits). */
  allowReboot?: boolean
  /** Extra qemu arguments, appended. */
  extraArgs?: string[]
  /** qemu binary (default qemu-system-x86_64 on PATH). */
  qemu?: string
  /** Called with each line qemu writes on stderr, and with rdk's own notices. */
  onMessage?: (line: string) => void
  /** Called right before qemu starts (each time, if it is restarted), e.g. to print the forwards. */
  onLaunch?: (info: {argv: string[]; resolved: ResolvedVm}) => void
}

export interface ResolvedVm {
  qemu: string
  /** What -kernel gets: the bzImage, or the ELF extracted from it (PVH); undefined for firmware boots. */
  kernel?: string
  pvh: boolean
  accel: Accel
  accelReason: string
  forwards: Required<PortForward>[]
  firmware?: string
  /**
   * OVMF as pflash: the code (read-only) and the variable store. Secure Boot: a private copy of the
   * store (removed with tempDir); `plain`: no Secure Boot/SMM, the caller's persistent store (uefiVars).
   */
  pflash?: {code: string; vars: string; tempDir?: string; plain?: boolean}
  disks: Required<DiskSpec>[]
}

export interface Vm {
  pid: number
  /** The qemu command line that is running. */
  argv: string[]
  accel: Accel
  accelReason: string
  /** Booted the uncompressed kernel through its PVH entry. */
  pvh: boolean
  /** When qemu was started (ms since the epoch). */
  startedAt: number
  /** Everything the guest printed on the serial console so far (empty when interactive). */
  serialLog(): string
  /** The 127.0.0.1 port that forwards to `guestPort`. */
  hostPort(guestPort: number): number
  /** Resolve with the first match in the serial log (past or future); reject on timeout or exit. */
  waitForSerial(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>
  /** Poll http://127.0.0.1:<hostPort(guestPort)><path> until an HTTP response arrives (any status). */
  waitForHttp(guestPort: number, path: string, timeoutMs: number): Promise<{status: number; body: string; ms: number}>
  /** Resolves when qemu exits. */
  readonly exited: Promise<{code: number | null; signal: NodeJS.Signals | null}>
  /** Stop the qemu this started (SIGTERM by PID, SIGKILL after 5 s). */
  stop(): Promise<void>
}

/** "10G", "512M", "1T", "4096" → bytes. */
export function parseSize(size: number | string): number {
  if (typeof size === 'number') return size
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$/i.exec(size)
  if (!m) throw new BootError(`'${size}' is not a size (like 10G, 512M or a number of bytes)`)
  const mult = {'': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4}[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't']
  return Math.round(Number(m[1]) * mult)
}

/** "8080:9999" or "9999" (a free host port) → PortForward. */
export function parsePortForward(text: string): PortForward {
  const m = /^(?:(\d+):)?(\d+)$/.exec(text.trim())
  if (!m) throw new BootError(`port forward '${text}' must be HOST:GUEST or GUEST (ports; the host side always binds 127.0.0.1)`)
  const hostPort = m[1] === undefined ? 0 : Number(m[1])
  const guestPort = Number(m[2])
  for (const p of [hostPort, guestPort]) if (p > 65535) throw new BootError(`port forward '${text}': ${p} is not a port`)
  if (guestPort === 0) throw new BootError(`port forward '${text}': the guest port must not be 0`)
  return {hostPort, guestPort}
}

export function normaliseMac(mac: string): string {
  const hex = mac.toLowerCase().replace(/[-:.]/g, '')
  if (!/^[0-9a-f]{12}$/.test(hex)) throw new BootError(`'${mac}' is not a MAC address`)
  if (parseInt(hex.slice(0, 2), 16) & 1) throw new BootError(`'${mac}' is a multicast address; use a unicast MAC (e.g. 52:54:00:…)`)
  return hex.match(/../g)!.join(':')
}

/** A free TCP port on 127.0.0.1 (closed again at once: qemu binds it a moment later). */
export async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen({host: '127.0.0.1', port: 0}, () => {
      const addr = srv.address()
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))))
    })
  })
}

// ---------------------------------------------------------------------------------------------
// accelerator

/**
 * A 64 KiB "BIOS" whose reset vector writes 'K' to COM1 and halts: proves that the accelerator runs
 * guest code at all, in a fraction of a second.
 */
export function probeFirmware(): Buffer {
  const rom = Buffer.alloc(65536, 0xff)
  // mov dx,0x3f8 ; mov al,'K' ; out dx,al ; hlt ; jmp $-1
  Buffer.from([0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xf4, 0xeb, 0xfd]).copy(rom, 65536 - 16)
  return rom
}

let accelProbe: Promise<{accel: Accel; reason: string}> | undefined

/** Which accelerator to use: KVM only if the CPU shows vmx/svm, /dev/kvm opens and a probe guest runs. */
export function probeAccel(qemu = QEMU): Promise<{accel: Accel; reason: string}> {
  accelProbe ??= (async () => {
    const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '')
    if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) return {accel: 'tcg', reason: 'the CPU shows no vmx/svm flag (no usable hardware virtualisation)'}
    try {
      await access('/dev/kvm', fsConstants.R_OK | fsConstants.W_OK)
      await (await open('/dev/kvm', 'r+')).close()
    } catch (err) {
      return {accel: 'tcg', reason: `/dev/kvm cannot be opened (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`}
    }
    const dir = await mkdtemp(join(tmpdir(), 'rdk-kvm-probe-'))
    try {
      await writeFile(join(dir, 'probe.rom'), probeFirmware())
      const r = await run(
        qemu,
        [
          '-accel',
          'kvm',
          '-machine',
          'pc',
          '-nodefaults',
          '-display',
          'none',
          '-m',
          '16',
          '-bios',
          join(dir, 'probe.rom'),
          '-serial',
          `file:${join(dir, 'serial')}`,
        ],
        {timeoutMs: 3000, allowFailure: true},
      )
      const out = await readFile(join(dir, 'serial'), 'utf8').catch(() => '')
      if (out.includes('K')) return {accel: 'kvm', reason: 'vmx/svm present, /dev/kvm opens and a probe guest ran'}
      return {accel: 'tcg', reason: `a probe guest did not run under KVM${r.stderr.trim() ? ` (${r.stderr.trim().split('\n').pop()})` : ''}`}
    } finally {
      await rm(dir, {recursive: true, force: true})
    }
  })()
  return accelProbe
}

// ---------------------------------------------------------------------------------------------
// PVH: the uncompressed kernel

/** The compressed kernel inside a bzImage (boot protocol ≥ 2.08: payload_offset/payload_length). */
export function bzImagePayload(image: Buffer): {format: 'xz' | 'gzip' | 'zstd' | 'lz4' | 'unknown'; data: Buffer} {
  if (image.length < 0x260 || image.readUInt16LE(0x1fe) !== 0xaa55 || image.toString('latin1', 0x202, 0x206) !== 'HdrS') {
    throw new BootError('not a bzImage (no HdrS boot header)')
  }
  if (image.readUInt16LE(0x206) < 0x208) throw new BootError('bzImage boot protocol older than 2.08 (no payload fields)')
  const setupSects = image[0x1f1] || 4
  const start = (setupSects + 1) * 512 + image.readUInt32LE(0x248)
  const data = image.subarray(start, start + image.readUInt32LE(0x24c))
  const magic = data.subarray(0, 6).toString('hex')
  const format =
    magic === 'fd377a585a00'
      ? 'xz'
      : magic.startsWith('1f8b')
        ? 'gzip'
        : magic.startsWith('28b52ffd')
          ? 'zstd'
          : magic.startsWith('02214c18')
            ? 'lz4'
            : 'unknown'
  return {format, data}
}

/** Does this ELF kernel carry a PVH entry point (Xen note XEN_ELFNOTE_PHYS32_ENTRY = 18)? */
export function hasPvhNote(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) return false
  // A note header: namesz 4, descsz 4 or 8, type 18, name "Xen\0".
  const tail = Buffer.from([0x12, 0, 0, 0, 0x58, 0x65, 0x6e, 0])
  for (let i = elf.indexOf(tail); i >= 0; i = elf.indexOf(tail, i + 1)) {
    if (i >= 8 && elf.readUInt32LE(i - 8) === 4 && [4, 8].includes(elf.readUInt32LE(i - 4))) return true
  }
  return false
}

/**
 * The uncompressed kernel of `bzImage` with a PVH entry, cached as `<cacheDir>/vmlinux/<sha256>`;
 * undefined (with the reason) when this kernel cannot boot that way.
 */
export async function pvhKernel(bzImage: string, cacheDir: string): Promise<{path?: string; reason?: string}> {
  const image = await readFile(bzImage)
  const sha = createHash('sha256').update(image).digest('hex')
  const out = join(cacheDir, 'vmlinux', `${sha}.elf`)
  if (
    await stat(out).then(
      (st) => st.isFile(),
      () => false,
    )
  )
    return {path: out}
  if (image.length >= 4 && image.readUInt32BE(0) === 0x7f454c46) return hasPvhNote(image) ? {path: bzImage} : {reason: 'the ELF kernel has no PVH note'}
  let payload
  try {
    payload = bzImagePayload(image)
  } catch (err) {
    return {reason: (err as Error).message}
  }
  let elf: Buffer
  try {
    switch (payload.format) {
      case 'xz':
        elf = (await runBuffer('xz', ['-dc', '--single-stream'], {input: payload.data})).stdout
        break
      case 'zstd':
        elf = (await runBuffer('zstd', ['-dcq'], {input: payload.data})).stdout
        break
      case 'gzip':
        elf = gunzipSync(payload.data)
        break
      default:
        return {reason: `the kernel is compressed with ${payload.format}, which rdk does not unpack`}
    }
  } catch (err) {
    return {reason: `cannot unpack the kernel: ${(err as Error).message}`}
  }
  if (!hasPvhNote(elf)) return {reason: 'the kernel has no PVH entry point (CONFIG_PVH)'}
  await mkdir(join(cacheDir, 'vmlinux'), {recursive: true})
  const tmp = `${out}.${process.pid}.tmp`
  await writeFile(tmp, elf)
  await rename(tmp, out)
  return {path: out}
}

// ---------------------------------------------------------------------------------------------
// command line

/** Secure-Boot OVMF (SMM, Microsoft keys enrolled) from Debian's `ovmf`. */
export const OVMF_SECURE = {code: '/usr/share/OVMF/OVMF_CODE_4M.ms.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd'}

/** OVMF without Secure Boot or SMM, split into code and a variable-store template (Debian `ovmf`). */
export const OVMF_PLAIN = {code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd'}

export async function findOvmf(): Promise<string> {
  for (const p of OVMF_PATHS) {
    if (
      await stat(p).then(
        (s) => s.isFile(),
        () => false,
      )
    )
      return p
  }
  throw new BootError(`UEFI firmware not found (${OVMF_PATHS.join(', ')}): install the Debian package 'ovmf' (apt-get install ovmf)`)
}

/** The qemu arguments for a resolved VM (pure: for the command line shown to users and tests). */
export function qemuArgs(opts: VmOptions, r: ResolvedVm): string[] {
  const secure = r.pflash && !r.pflash.plain
  const args: string[] = [
    '-name',
    'rdk',
    '-machine',
    secure ? 'q35,smm=on' : 'q35',
    '-accel',
    r.accel,
    '-cpu',
    opts.cpu ?? (r.accel === 'kvm' ? 'host' : 'max'),
  ]
  args.push('-m', String(opts.memoryMiB ?? DEFAULT_MEMORY_MIB), '-smp', String(opts.cpus ?? 1))
  args.push('-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none')
  if (r.pflash) {
    if (secure) args.push('-global', 'driver=cfi.pflash01,property=secure,value=on')
    args.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${chardevValue(r.pflash.code)}`)
    args.push('-drive', `if=pflash,format=raw,unit=1,file=${chardevValue(r.pflash.vars)}`)
  } else if (r.firmware) args.push('-bios', r.firmware)
  const boot = opts.boot
  if (r.kernel) {
    args.push('-kernel', r.kernel)
    if (opts.initrd) args.push('-initrd', opts.initrd)
    args.push('-append', kernelAppend(opts.append))
  } else if (boot?.kind === 'iso' && boot.as === 'cdrom') {
    args.push('-drive', `file=${chardevValue(boot.path)},media=cdrom,if=none,id=boot0,readonly=on`, '-device', 'ide-cd,drive=boot0,bootindex=0')
  } else if (boot?.kind === 'iso') {
    // An isohybrid image written to a stick: a raw disk the firmware boots from its MBR / GPT ESP.
    args.push(
      '-drive',
      `file=${chardevValue(boot.path)},format=raw,if=none,id=boot0,readonly=on`,
      '-device',
      'virtio-blk-pci,drive=boot0,bootindex=0,serial=rdk-boot',
    )
  }
  if (opts.interactive) {
    args.push('-chardev', `stdio,id=con0,mux=on,signal=off${opts.serialLogFile ? `,logfile=${chardevValue(opts.serialLogFile)}` : ''}`)
    args.push('-serial', 'chardev:con0', '-mon', 'chardev=con0,mode=readline')
  } else {
    args.push('-chardev', 'stdio,id=con0,signal=off', '-serial', 'chardev:con0', '-monitor', 'none')
  }
  if (!opts.noNetwork) {
    const fwd = r.forwards.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('')
    const net =
      boot?.kind === 'tftp'
        ? `,tftp=${chardevValue(boot.dir)},bootfile=${chardevValue(boot.bootfile)}`
        : boot?.kind === 'ipxe'
          ? `,bootfile=${chardevValue(boot.url)}`
          : ''
    args.push('-netdev', `user,id=n0${opts.restrictNetwork ? ',restrict=on' : ''}${net}${fwd}`)
    // Network boots need the NIC's option ROM (iPXE, from ipxe-qemu); the others skip it (faster).
    const netboot = !r.kernel && (boot?.kind === 'tftp' || boot?.kind === 'ipxe')
    args.push('-device', `virtio-net-pci,netdev=n0,mac=${normaliseMac(opts.mac ?? DEFAULT_MAC)}${netboot ? ',bootindex=0' : ',romfile='}`)
  }
  r.disks.forEach((d, i) => {
    args.push('-drive', `file=${chardevValue(d.path)},if=none,id=disk${i},format=${d.format},cache=unsafe,discard=unmap`)
    if (d.bus === 'nvme') args.push('-device', `nvme,drive=disk${i},serial=rdk-disk${i}`)
    else args.push('-device', `virtio-blk-pci,drive=disk${i},serial=rdk-disk${i}`)
  })
  args.push('-device', 'virtio-rng-pci')
  if (!opts.allowReboot) args.push('-no-reboot')
  args.push(...(opts.extraArgs ?? []))
  return args
}

/** Exactly one of kernel / boot; the ISO or TFTP tree exists; network boots need a network. */
async function checkFirmwareBoot(opts: VmOptions): Promise<void> {
  const boot = opts.boot
  if (opts.fromDisk) {
    if (opts.kernel || boot) throw new BootError('boot from disk, or a kernel / ISO / network boot, not both')
    if (!opts.disks?.length) throw new BootError('booting from disk needs at least one disk')
    if (opts.initrd || opts.append) throw new BootError('--initrd/--append only apply to a kernel boot')
    return
  }
  if (opts.kernel && boot) throw new BootError(`boot either a kernel or ${boot.kind === 'iso' ? 'an ISO' : 'over the network'}, not both`)
  if (!opts.kernel && !boot) throw new BootError('nothing to boot: give a kernel (and initrd), an ISO, a PXE directory or an iPXE URL')
  if (!boot) return
  if (boot.kind !== 'iso' && opts.noNetwork) throw new BootError('a network boot needs the network (noNetwork is set)')
  if (boot.kind === 'iso') {
    if (
      !(await stat(boot.path).then(
        (s) => s.isFile(),
        () => false,
      ))
    )
      throw new BootError(`ISO ${boot.path} does not exist`)
  } else if (boot.kind === 'tftp') {
    if (
      !(await stat(boot.dir).then(
        (s) => s.isDirectory(),
        () => false,
      ))
    )
      throw new BootError(`PXE directory ${boot.dir} does not exist`)
    if (
      !(await stat(join(boot.dir, boot.bootfile)).then(
        (s) => s.isFile(),
        () => false,
      ))
    ) {
      throw new BootError(`PXE directory ${boot.dir} has no ${boot.bootfile} (make it with rdk build --format pxe)`)
    }
  } else {
    if (!/^https?:\/\/\S+$/.test(boot.url)) throw new BootError(`iPXE URL '${boot.url}' must be an http:// or https:// URL`)
    if (opts.uefi || opts.secureBoot || opts.uefiVars)
      throw new BootError("--ipxe boots through the NIC's BIOS iPXE ROM: it cannot be combined with --uefi (boot the PXE tree with --pxe --uefi instead)")
  }
  if (opts.initrd || opts.append) throw new BootError('--initrd/--append only apply to a kernel boot; an ISO or PXE tree carries its own kernel command line')
}

/**
 * A URL as the guest must see it: 127.0.0.1 / localhost (this machine's loopback, where the user's
 * HTTP server listens) is 10.0.2.2 inside qemu's user networking. Only the guest uses it.
 */
export function guestUrl(url: string): string {
  return url.replace(/^(https?:\/\/)(127\.0\.0\.1|localhost|\[::1\])(?=[:/]|$)/i, '$110.0.2.2')
}

/** The kernel command line: the user's words plus `console=ttyS0` (unless they chose a ttyS console). */
export function kernelAppend(extra?: string): string {
  const words = (extra ?? '').trim()
  return /(^|\s)console=ttyS/.test(words) ? words : `${words}${words ? ' ' : ''}console=ttyS0`
}

/** qemu option values separate sub-options with ',': a literal comma is written twice. */
function chardevValue(v: string): string {
  return v.replace(/,/g, ',,')
}

function quoteArg(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`
}

/** The command line as one copy-pasteable string. */
export function formatCommand(argv: readonly string[]): string {
  return argv.map(quoteArg).join(' ')
}

async function prepareDisks(disks: DiskSpec[], dryRun: boolean): Promise<Required<DiskSpec>[]> {
  const out: Required<DiskSpec>[] = []
  for (const d of disks) {
    const format = d.format ?? (extname(d.path).toLowerCase() === '.qcow2' ? 'qcow2' : 'raw')
    const bus = d.bus ?? 'virtio'
    const exists = await stat(d.path).then(
      () => true,
      () => false,
    )
    if (!exists && !dryRun) {
      if (d.size === undefined) throw new BootError(`disk ${d.path} does not exist (give --disk-size to create it)`)
      await run('qemu-img', ['create', '-q', '-f', format, d.path, String(parseSize(d.size))])
    }
    out.push({path: d.path, format, bus, size: d.size ?? 0})
  }
  return out
}

/**
 * Everything startVm decides before qemu runs: the accelerator, free host ports, firmware, the
 * PVH kernel, disks (created when missing). `dryRun` decides the same without side effects:
 * host ports stay as asked (0 = "a free one at start") and no disk is created.
 */
export async function resolveVm(opts: VmOptions, {dryRun = false}: {dryRun?: boolean} = {}): Promise<ResolvedVm> {
  const qemu = opts.qemu ?? QEMU
  if (!opts.qemu && !(await which(QEMU))) throw new ToolMissingError(QEMU)
  for (const [what, p] of [
    ['kernel', opts.kernel],
    ['initrd', opts.initrd],
  ] as const) {
    if (
      p !== undefined &&
      !(await stat(p).then(
        (s) => s.isFile(),
        () => false,
      ))
    )
      throw new BootError(`${what} ${p} does not exist`)
  }
  await checkFirmwareBoot(opts)
  const forced = opts.accel ?? (process.env.RDK_QEMU_ACCEL as Accel | undefined)
  if (forced !== undefined && forced !== 'kvm' && forced !== 'tcg') throw new BootError(`accelerator must be kvm or tcg, got '${String(forced)}'`)
  const {accel, reason} = forced ? {accel: forced, reason: opts.accel ? 'chosen' : 'chosen by $RDK_QEMU_ACCEL'} : await probeAccel(qemu)
  const forwards: Required<PortForward>[] = []
  const wanted = opts.noNetwork ? [] : (opts.portForwards ?? [{guestPort: AGENT_PORT}])
  const guestSeen = new Set<number>()
  for (const f of wanted) {
    if (guestSeen.has(f.guestPort)) throw new BootError(`guest port ${f.guestPort} is forwarded twice`)
    guestSeen.add(f.guestPort)
    forwards.push({guestPort: f.guestPort, hostPort: f.hostPort || (dryRun ? 0 : await freeLoopbackPort())})
  }
  let pflash: ResolvedVm['pflash']
  if (opts.secureBoot) {
    if (typeof opts.uefi === 'string') throw new BootError('Secure Boot uses OVMF_CODE_4M.ms.fd: it cannot be combined with a firmware file')
    for (const f of [OVMF_SECURE.code, OVMF_SECURE.vars]) {
      if (
        !(await stat(f).then(
          (st) => st.isFile(),
          () => false,
        ))
      )
        throw new BootError(`Secure Boot firmware ${f} not found: install the Debian package 'ovmf' (apt-get install ovmf)`)
    }
    if (dryRun) pflash = {code: OVMF_SECURE.code, vars: '<copy of OVMF_VARS_4M.ms.fd>'}
    else {
      // qemu writes to the variable store: each VM gets its own copy, removed when qemu exits.
      const tempDir = await mkdtemp(join(tmpdir(), 'rdk-ovmf-vars-'))
      const vars = join(tempDir, 'OVMF_VARS_4M.ms.fd')
      await writeFile(vars, await readFile(OVMF_SECURE.vars))
      pflash = {code: OVMF_SECURE.code, vars, tempDir}
    }
  }
  if (opts.uefiVars) {
    if (opts.secureBoot) throw new BootError('uefiVars (a plain OVMF variable store) cannot be combined with Secure Boot')
    if (typeof opts.uefi === 'string') throw new BootError('uefiVars uses OVMF_CODE_4M.fd: it cannot be combined with a firmware file')
    for (const f of [OVMF_PLAIN.code, OVMF_PLAIN.vars]) {
      if (
        !(await stat(f).then(
          (st) => st.isFile(),
          () => false,
        ))
      )
        throw new BootError(`UEFI firmware ${f} not found: install the Debian package 'ovmf' (apt-get install ovmf)`)
    }
    if (!dryRun && !existsSync(opts.uefiVars)) await writeFile(opts.uefiVars, await readFile(OVMF_PLAIN.vars), {flag: 'wx'})
    pflash = {code: OVMF_PLAIN.code, vars: opts.uefiVars, plain: true}
  }
  const firmware = pflash ? pflash.code : opts.uefi === true ? await findOvmf() : typeof opts.uefi === 'string' ? opts.uefi : undefined
  let kernel = opts.kernel
  let pvh = false
  if (opts.kernel && !firmware && (opts.pvh ?? true)) {
    const r = await pvhKernel(opts.kernel, opts.cacheDir ?? defaultCacheDir())
    if (r.path) {
      kernel = r.path
      pvh = true
    } else {
      opts.onMessage?.(`rdk boot: booting the bzImage (no PVH: ${r.reason})`)
    }
  }
  return {qemu, kernel, pvh, accel, accelReason: reason, forwards, firmware, pflash, disks: await prepareDisks(opts.disks ?? [], dryRun)}
}

// ---------------------------------------------------------------------------------------------
// running

const KVM_SILENCE_MS = 15_000
const STARTUP_FAILURE_MS = 2_000

/** Boot a VM. Resolves once qemu is running (not when the guest is up: see waitForSerial/waitForHttp). */
export async function startVm(opts: VmOptions): Promise<Vm> {
  const r = await resolveVm(opts)
  const probed = !opts.accel && !process.env.RDK_QEMU_ACCEL
  for (let attempt = 1; ; attempt++) {
    const vm = await launch(opts, r)
    const early = await vm.earlyExit(STARTUP_FAILURE_MS)
    if (early) {
      // A forwarded port taken between our probe and qemu's bind: pick new free ports, once or twice.
      if (/host ?forward/i.test(early) && attempt < 3 && r.forwards.some((_, i) => !opts.portForwards?.[i]?.hostPort)) {
        for (let i = 0; i < r.forwards.length; i++) if (!opts.portForwards?.[i]?.hostPort) r.forwards[i]!.hostPort = await freeLoopbackPort()
        continue
      }
      throw new BootError(`qemu exited at once: ${early}\ncommand: ${formatCommand(vm.argv)}`)
    }
    if (r.accel === 'kvm' && probed && !opts.interactive) {
      const spoke = await vm.waitForSerial(/\S/, KVM_SILENCE_MS).then(
        () => true,
        () => false,
      )
      if (!spoke) {
        opts.onMessage?.(`rdk boot: the guest printed nothing in ${KVM_SILENCE_MS / 1000} s under KVM: restarting it under TCG`)
        await vm.stop()
        r.accel = 'tcg'
        r.accelReason = `KVM guest stayed silent for ${KVM_SILENCE_MS / 1000} s`
        continue
      }
    }
    return vm
  }
}

interface LaunchedVm extends Vm {
  /** If qemu exits within `ms`, its stderr; else undefined. */
  earlyExit(ms: number): Promise<string | undefined>
}

async function launch(opts: VmOptions, r: ResolvedVm): Promise<LaunchedVm> {
  if (r.pflash?.tempDir && !existsSync(r.pflash.vars)) {
    // A restart (KVM → TCG) after the first qemu's exit removed the private variable store.
    mkdirSync(r.pflash.tempDir, {recursive: true})
    copyFileSync(OVMF_SECURE.vars, r.pflash.vars)
  }
  const args = qemuArgs(opts, r)
  const argv = [r.qemu, ...args]
  opts.onLaunch?.({argv, resolved: r})
  const child: ChildProcess = spawn(r.qemu, args, {
    stdio: opts.interactive ? ['inherit', 'inherit', 'pipe'] : ['pipe', 'pipe', 'pipe'],
    shell: false,
    detached: false,
  })
  const startedAt = Date.now()
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!))
    child.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'ENOENT' ? new ToolMissingError(r.qemu) : err))
  })
  child.on('error', () => undefined) // later errors (a closed pipe) show up as the exit

  let serial = ''
  let stderr = ''
  const waiters = new Set<() => void>()
  const notify = () => {
    for (const w of [...waiters]) w()
  }
  let logStream: WriteStream | undefined
  if (opts.serialLogFile && !opts.interactive) logStream = createWriteStream(opts.serialLogFile, {flags: 'w'})
  child.stdout?.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8')
    serial += text
    logStream?.write(chunk)
    notify()
  })
  let errLine = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8')
    errLine += chunk.toString('utf8')
    const lines = errLine.split('\n')
    errLine = lines.pop()!
    for (const l of lines) if (l.trim()) opts.onMessage?.(l)
  })
  // Keep stdin open (qemu's stdio chardev would see EOF otherwise) but never write to it.
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((resolve) =>
    child.once('exit', (code, signal) => {
      logStream?.end()
      if (r.pflash?.tempDir) rmSync(r.pflash.tempDir, {recursive: true, force: true})
      resolve({code, signal})
    }),
  )
  let done = false
  void exited.then(() => {
    done = true
    process.removeListener('exit', killOnExit)
    notify()
  })
  // Never leave a qemu behind when this process exits (kills only this PID).
  const killOnExit = () => {
    if (!done) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  process.once('exit', killOnExit)

  const forwards = new Map(r.forwards.map((f) => [f.guestPort, f.hostPort]))
  const tail = () => serial.split('\n').slice(-15).join('\n')

  const vm: LaunchedVm = {
    pid,
    argv,
    accel: r.accel,
    accelReason: r.accelReason,
    pvh: r.pvh,
    startedAt,
    exited,
    serialLog: () => serial,
    hostPort(guestPort: number): number {
      const p = forwards.get(guestPort)
      if (p === undefined) throw new BootError(`guest port ${guestPort} is not forwarded (forwarded: ${[...forwards.keys()].join(', ') || 'none'})`)
      return p
    },
    waitForSerial(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = serial.match(re)
          if (m) return finish(() => resolve(m))
          if (done)
            return finish(() =>
              reject(
                new BootError(
                  `qemu exited before the serial console showed ${re}${stderr.trim() ? `; qemu said: ${stderr.trim()}` : ''}\n--- serial (last lines) ---\n${tail()}`,
                ),
              ),
            )
        }
        const timer = setTimeout(
          () =>
            finish(() =>
              reject(new BootError(`timed out after ${timeoutMs} ms waiting for ${re} on the serial console\n--- serial (last lines) ---\n${tail()}`)),
            ),
          timeoutMs,
        )
        const finish = (fn: () => void) => {
          clearTimeout(timer)
          waiters.delete(check)
          fn()
        }
        waiters.add(check)
        check()
      })
    },
    async waitForHttp(guestPort: number, path: string, timeoutMs: number) {
      const url = `http://127.0.0.1:${vm.hostPort(guestPort)}${path}`
      const deadline = Date.now() + timeoutMs
      let last = 'no attempt'
      while (Date.now() < deadline) {
        if (done) throw new BootError(`qemu exited while waiting for ${url}\n--- serial (last lines) ---\n${tail()}`)
        try {
          // slirp accepts the TCP connection even with no listener in the guest: only an HTTP answer counts.
          const res = await fetch(url, {signal: AbortSignal.timeout(Math.max(500, Math.min(3000, deadline - Date.now())))})
          return {status: res.status, body: await res.text(), ms: Date.now() - startedAt}
        } catch (err) {
          last = (err as Error).message
        }
        await new Promise((res) => setTimeout(res, 250))
      }
      throw new BootError(`no HTTP answer from ${url} within ${timeoutMs} ms (${last})\n--- serial (last lines) ---\n${tail()}`)
    },
    async stop(): Promise<void> {
      if (done) return
      try {
        process.kill(pid, 'SIGTERM')
      } catch {
        return
      }
      const killed = await Promise.race([exited.then(() => true), new Promise<boolean>((res) => setTimeout(() => res(false), 5000))])
      if (!killed) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // gone
        }
        await exited
      }
    },
    async earlyExit(ms: number): Promise<string | undefined> {
      // Over when qemu exits (a failure), the guest prints something, or `ms` pass.
      let timer: NodeJS.Timeout | undefined
      let onSerial: (() => void) | undefined
      const exitedSoon = await Promise.race([
        exited.then(() => true),
        new Promise<boolean>((res) => {
          timer = setTimeout(() => res(false), ms)
          onSerial = () => serial.length > 0 && res(false)
          waiters.add(onSerial)
          onSerial()
        }),
      ])
      clearTimeout(timer)
      if (onSerial) waiters.delete(onSerial)
      return exitedSoon ? stderr.trim() || 'no message' : undefined
    },
  }
  return vm
}
