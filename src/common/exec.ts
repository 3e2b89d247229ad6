/**
 * The one place rdk starts subprocesses (builder and agent alike).
 *
 * Every program is started directly (never through a shell), so user strings can never be
 * interpreted as shell syntax. A missing program becomes a ToolMissingError that names the
 * Debian package providing it.
 */
import {execa} from 'execa'
import {EXIT_FAILURE, UserError} from './errors.js'

/** Debian package that provides each host tool rdk calls. */
export const TOOL_PACKAGES: Readonly<Record<string, string>> = {
  blkid: 'util-linux',
  blockdev: 'util-linux',
  lsblk: 'util-linux',
  losetup: 'util-linux',
  partx: 'util-linux',
  mount: 'mount',
  umount: 'mount',
  truncate: 'coreutils',
  chroot: 'coreutils',
  tcpreplay: 'tcpreplay',
  'apt-get': 'apt',
  'apt-cache': 'apt',
  dpkg: 'dpkg',
  ldd: 'libc-bin',
  modinfo: 'kmod',
  strip: 'binutils',
  lscpu: 'util-linux',
  wipefs: 'util-linux',
  sfdisk: 'fdisk',
  shred: 'coreutils',
  sync: 'coreutils',
  dd: 'coreutils',
  sgdisk: 'gdisk',
  parted: 'parted',
  partprobe: 'parted',
  hdparm: 'hdparm',
  nvme: 'nvme-cli',
  smartctl: 'smartmontools',
  ipmitool: 'ipmitool',
  dmidecode: 'dmidecode',
  lshw: 'lshw',
  lspci: 'pciutils',
  ip: 'iproute2',
  udevadm: 'udev',
  mdadm: 'mdadm',
  efibootmgr: 'efibootmgr',
  'qemu-img': 'qemu-utils',
  prlimit: 'util-linux',
  'mkfs.ext4': 'e2fsprogs',
  'mkfs.ext2': 'e2fsprogs',
  'mkfs.ext3': 'e2fsprogs',
  'mkfs.xfs': 'xfsprogs',
  'mkfs.btrfs': 'btrfs-progs',
  mkswap: 'util-linux',
  'grub-mkstandalone': 'grub-common',
  'mkfs.vfat': 'dosfstools',
  tcpdump: 'tcpdump',
  xorriso: 'xorriso',
  cpio: 'cpio',
  zstd: 'zstd',
  xz: 'xz-utils',
  'qemu-system-x86_64': 'qemu-system-x86',
  'dpkg-deb': 'dpkg',
  depmod: 'kmod',
  modprobe: 'kmod',
  openssl: 'openssl',
  poweroff: 'systemd-sysv',
  reboot: 'systemd-sysv',
  'grub-mkimage': 'grub-common',
  mmd: 'mtools',
  mcopy: 'mtools',
  mdir: 'mtools',
  unzip: 'unzip',
  sha256sum: 'coreutils',
  tar: 'tar',
  'stress-ng': 'stress-ng',
  fio: 'fio',
}

/** A host tool is missing: a UserError (exit 2) whose hint is the Debian package to install. */
export class ToolMissingError extends UserError {
  readonly tool: string
  readonly debianPackage: string | undefined
  constructor(tool: string) {
    const pkg = TOOL_PACKAGES[tool]
    super(
      pkg
        ? `required program '${tool}' was not found on PATH: install the Debian package '${pkg}' (apt-get install ${pkg})`
        : `required program '${tool}' was not found on PATH`,
      {hint: pkg ? `apt-get install ${pkg}` : `install '${tool}' or add its directory to PATH`},
    )
    this.name = 'ToolMissingError'
    this.tool = tool
    this.debianPackage = pkg
  }
}

/** A tool ran and failed: a UserError with exit 1 (the message has its exit status and stderr). */
export class CommandFailedError extends UserError {
  readonly command: string
  readonly exitCode: number | undefined
  readonly stdout: string
  readonly stderr: string
  constructor(command: string, exitCode: number | undefined, signal: string | undefined, stdout: string, stderr: string, timedOut: boolean) {
    const how = timedOut ? 'timed out' : signal ? `was killed by ${signal}` : `exited with code ${exitCode}`
    super(`command '${command}' ${how}${stderr.trim() ? `: ${stderr.trim().slice(-2000)}` : ''}`, {exit: EXIT_FAILURE})
    this.name = 'CommandFailedError'
    this.command = command
    this.exitCode = exitCode
    this.stdout = stdout
    this.stderr = stderr
  }
}

export interface RunOptions {
  /** Data written to the program's stdin. */
  input?: string | Buffer
  /** Kill the program after this many milliseconds. */
  timeoutMs?: number
  /** Resolve (instead of throwing) when the program exits non-zero. */
  allowFailure?: boolean
  env?: Record<string, string | undefined>
  cwd?: string
}

export interface RunResult {
  command: string
  exitCode: number
  stdout: string
  stderr: string
}

/** Run `file` with `args` (no shell) and collect its output as text. */
export async function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const command = [file, ...args].join(' ')
  const result = await execa(file, args, {
    input: opts.input,
    timeout: opts.timeoutMs,
    env: opts.env,
    cwd: opts.cwd,
    reject: false,
    stripFinalNewline: false,
    maxBuffer: 256 * 1024 * 1024,
  })
  const stdout = String(result.stdout ?? '')
  const stderr = String(result.stderr ?? '')
  if ((result as {code?: string}).code === 'ENOENT' || (result.failed && result.exitCode === undefined && /ENOENT/.test(String(result.message)))) {
    throw new ToolMissingError(file)
  }
  const exitCode = result.exitCode ?? -1
  if (!opts.allowFailure && (result.failed || exitCode !== 0)) {
    throw new CommandFailedError(command, result.exitCode, result.signal, stdout, stderr, Boolean(result.timedOut))
  }
  return {command, exitCode, stdout, stderr}
}

/** Like run(), but the output is kept as raw bytes. */
export async function runBuffer(file: string, args: readonly string[], opts: RunOptions = {}): Promise<{exitCode: number; stdout: Buffer; stderr: string}> {
  const result = await execa(file, args, {
    input: opts.input,
    timeout: opts.timeoutMs,
    env: opts.env,
    cwd: opts.cwd,
    reject: false,
    encoding: 'buffer',
    maxBuffer: 1024 * 1024 * 1024,
  })
  if ((result as {code?: string}).code === 'ENOENT' || (result.failed && result.exitCode === undefined && /ENOENT/.test(String(result.message)))) {
    throw new ToolMissingError(file)
  }
  const stdout = Buffer.from(result.stdout as Uint8Array)
  const stderr = Buffer.from((result.stderr ?? new Uint8Array()) as Uint8Array).toString('utf8')
  const exitCode = result.exitCode ?? -1
  if (!opts.allowFailure && (result.failed || exitCode !== 0)) {
    throw new CommandFailedError([file, ...args].join(' '), result.exitCode, result.signal, '', stderr, Boolean(result.timedOut))
  }
  return {exitCode, stdout, stderr}
}

/** Resolve `tool` on PATH without running it. */
export async function which(tool: string): Promise<string | undefined> {
  const {access, constants} = await import('node:fs/promises')
  const {delimiter, join} = await import('node:path')
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    if (!dir) continue
    const candidate = join(dir, tool)
    try {
      await access(candidate, constants.X_OK)
      return candidate
    } catch {
      // not here
    }
  }
  return undefined
}
