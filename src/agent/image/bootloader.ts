/**
 * image.install_bootloader (IPA's extensions/image.py + efi_utils.py): UEFI boot entries with
 * efibootmgr for the ESP of the deployed disk, filling an empty ESP of a partition image from the
 * image itself, and GRUB for BIOS partition images.
 *
 * Exported for the software-RAID code (hardware/raid.ts): withMount, findEfiLoaders,
 * addUefiBootEntries, requireUefiFirmware.
 *
 * - efibootmgr only runs when /sys/firmware/efi exists (the machine booted in UEFI mode); otherwise
 *   the command fails clearly instead of touching anything.
 * - Every mount goes through withMount(), which always unmounts and removes its directory (never
 *   recursively: a directory still mounted is left in place).
 * - Every subprocess gets an argv array (common/exec.ts); chroot commands run programs of the
 *   deployed image with a fixed PATH.
 */
import {existsSync} from 'node:fs'
import {access, constants, cp, lstat, mkdir, mkdtemp, readdir, readFile, rmdir} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {CommandFailedError, run, runBuffer, ToolMissingError} from '../../common/exec.js'
import type {AgentConfig} from '../config.js'
import {CommandExecutionError, DeviceNotFound, InvalidCommandParamsError} from '../errors.js'
import type {Logger} from '../log.js'
import {isEspType, partitionNumber, partitionPath, partitionTable, type PartitionEntry} from '../disk/partitions.js'
import {probeDevice} from '../disk/probe.js'
import {rescanDevice} from '../disk/settle.js'

export const EFI_FIRMWARE_DIR = '/sys/firmware/efi'

// ------------------------------------------------------------------------------------------------
// Mounting

export interface MountOptions {
  /** -t TYPE (default: let mount probe). */
  fstype?: string
  /** -o OPTIONS, e.g. ['ro'] or ['bind']. */
  options?: string[]
  /** Mount at this existing directory instead of a fresh temporary one (not removed afterwards). */
  at?: string
  log?: Logger
}

/**
 * Mount `device` (a block device, or a directory with options ['bind']), run `fn` with the mount
 * point, then unmount (3 attempts) and remove the temporary directory. An unmount failure is an
 * error unless `fn` already failed (its error wins).
 */
export async function withMount<T>(device: string, fn: (dir: string) => Promise<T>, opts: MountOptions = {}): Promise<T> {
  const dir = opts.at ?? (await mkdtemp(path.join(os.tmpdir(), 'rdk-mnt-')))
  const args = [...(opts.fstype ? ['-t', opts.fstype] : []), ...(opts.options?.length ? ['-o', opts.options.join(',')] : []), device, dir]
  try {
    await run('mount', args)
  } catch (err) {
    if (!opts.at) await rmdir(dir).catch(() => undefined)
    if (err instanceof CommandFailedError) throw new CommandExecutionError(`Unable to mount ${device}: ${err.stderr.trim() || err.message}`)
    throw err
  }
  opts.log?.debug('mounted', {device, dir})
  let failed = false
  try {
    return await fn(dir)
  } catch (err) {
    failed = true
    throw err
  } finally {
    const unmounted = await umount(dir, opts.log)
    if (unmounted && !opts.at) await rmdir(dir).catch(() => undefined)
    // biome-ignore lint/correctness/noUnsafeFinally: deliberate: fn succeeded but the unmount failed, that is the error (fn's own error wins)
    if (!unmounted && !failed) throw new CommandExecutionError(`Unmounting ${device} from ${dir} failed. Attempted 3 times.`)
  }
}

async function umount(dir: string, log?: Logger): Promise<boolean> {
  for (let attempt = 1; attempt <= 3; attempt++) {
    const r = await run('umount', [dir], {allowFailure: true})
    if (r.exitCode === 0) return true
    log?.warn('umount failed', {dir, attempt, stderr: r.stderr.trim()})
    await new Promise((res) => setTimeout(res, 500 * attempt))
  }
  return false
}

// ------------------------------------------------------------------------------------------------
// Finding the ESP and its loaders

/** IPA's BOOTLOADERS_EFI (the CSV hint files and the removable-media default loaders). */
const BOOTLOADERS_EFI = [
  'bootx64.csv',
  'boot.csv',
  'bootia32.efi',
  'bootx64.efi',
  'bootia64.efi',
  'bootarm.efi',
  'bootaa64.efi',
  'bootriscv32.efi',
  'bootriscv64.efi',
  'bootriscv128.efi',
  'grubaa64.efi',
  'winload.efi',
]
/** When none of IPA's names is present (grub-install without --removable): the distribution loaders. */
const FALLBACK_LOADERS = ['shimx64.efi', 'grubx64.efi']

async function walkFiles(root: string, rel = ''): Promise<string[]> {
  const out: string[] = []
  let entries
  try {
    entries = await readdir(path.join(root, rel), {withFileTypes: true})
  } catch {
    return out
  }
  entries.sort((a, b) => a.name.toLowerCase().localeCompare(b.name.toLowerCase()) || a.name.localeCompare(b.name))
  const dirs: string[] = []
  for (const e of entries) {
    const p = rel ? `${rel}/${e.name}` : e.name
    if (e.isFile()) out.push(p)
    else if (e.isDirectory()) dirs.push(p)
  }
  for (const d of dirs) out.push(...(await walkFiles(root, d)))
  return out
}

async function executable(file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/**
 * The EFI loaders on a mounted ESP, as paths relative to it ('EFI/BOOT/BOOTX64.EFI'), as IPA's
 * _get_efi_bootloaders finds them: a BOOTX64.CSV / BOOT.CSV hint wins alone (it names the loader
 * and the label, e.g. shim); else every executable file with a default loader name. When there is
 * none of those, shimx64.efi, else grubx64.efi (what grub-install leaves without --removable).
 */
export async function findEfiLoaders(espMountDir: string): Promise<string[]> {
  const files = await walkFiles(espMountDir)
  const csv = files.find((f) => f.toLowerCase().endsWith('.csv') && BOOTLOADERS_EFI.includes(path.posix.basename(f).toLowerCase()))
  if (csv) return [csv]
  const found: string[] = []
  for (const f of files) {
    if (BOOTLOADERS_EFI.includes(path.posix.basename(f).toLowerCase()) && (await executable(path.join(espMountDir, f)))) found.push(f)
  }
  if (found.length) return found
  for (const name of FALLBACK_LOADERS) {
    const hits = files.filter((f) => path.posix.basename(f).toLowerCase() === name)
    if (hits.length) return hits
  }
  return []
}

export interface EspLocation {
  /** The partition's device node (/dev/sda1, /dev/nvme0n1p1, /dev/loop3p1). */
  device: string
  /** Its number on the disk (efibootmgr -p). */
  number: number
  entry: PartitionEntry
  label: string
}

/**
 * A partition of `disk` by filesystem UUID or partition UUID (IPA's get_partition), case-insensitive.
 * DeviceNotFound when none matches.
 */
export async function partitionByUuid(disk: string, uuid: string): Promise<{device: string; number: number; entry: PartitionEntry}> {
  const table = await partitionTable(disk)
  const want = uuid.toLowerCase()
  for (const p of table?.partitions ?? []) {
    const n = partitionNumber(p.node)
    const dev = partitionPath(disk, n)
    if (p.uuid?.toLowerCase() === want) return {device: dev, number: n, entry: p}
    const tags = await probeDevice(dev)
    if ((tags.UUID ?? '').toLowerCase() === want || (tags.PART_ENTRY_UUID ?? '').toLowerCase() === want) return {device: dev, number: n, entry: p}
  }
  throw new DeviceNotFound(`No partition with UUID ${uuid} found on device ${disk}`)
}

/**
 * The ESP of `disk` (IPA's manage_uefi): the partition typed as an ESP on the disk's own table
 * (whole-disk images are trusted), else the partition with `efiSystemPartUuid`.
 */
export async function findEsp(disk: string, efiSystemPartUuid?: string | null): Promise<EspLocation> {
  const table = await partitionTable(disk)
  if (table) {
    const esp = table.partitions.find((p) => isEspType(table.label, p.type))
    if (esp) {
      const n = partitionNumber(esp.node)
      return {device: partitionPath(disk, n), number: n, entry: esp, label: table.label}
    }
  }
  if (efiSystemPartUuid) {
    const p = await partitionByUuid(disk, efiSystemPartUuid)
    return {...p, label: table?.label ?? 'unknown'}
  }
  throw new DeviceNotFound(
    `No EFI partition could be detected on device ${disk} and EFI partition UUID has not been recorded during deployment ` +
      `(which is often the case for whole disk images). Are you using a UEFI-compatible image?`,
  )
}

// ------------------------------------------------------------------------------------------------
// NVRAM entries

/** efibootmgr only makes sense (and only runs) on a machine booted through UEFI. */
export function requireUefiFirmware(firmwareDir = EFI_FIRMWARE_DIR): void {
  if (!existsSync(firmwareDir)) {
    throw new CommandExecutionError(
      `This machine did not boot in UEFI mode (${firmwareDir} does not exist): UEFI boot entries cannot be written with efibootmgr. ` +
        `Boot the deploy ramdisk in UEFI mode to deploy in UEFI mode.`,
    )
  }
}

export interface BootRecord {
  num: string
  text: string
}

/** `efibootmgr -v` records (number and the rest of the line). */
export async function bootRecords(): Promise<BootRecord[]> {
  const r = await runBuffer('efibootmgr', ['-v'])
  const out: BootRecord[] = []
  for (const line of r.stdout.toString('utf8').split('\n')) {
    const m = /^Boot([0-9A-Fa-f]{4})\*?\s+(.*)$/.exec(line)
    if (m) out.push({num: m[1]!, text: m[2]!})
  }
  return out
}

export interface UefiEntryArgs {
  /** The whole disk holding the ESP. */
  disk: string
  /** The ESP's partition number on `disk`. */
  partition: number
  /** Loader paths relative to the ESP, as findEfiLoaders returns them. */
  loaders: string[]
  /** Base label (default 'ironic': entries 'ironic1', 'ironic2'…); a CSV hint brings its own label. */
  label?: string
  /** Appended to every label after a space (the RAID code tells the holder disks apart with it). */
  labelSuffix?: string
  /** The ESP's mount point: needed to read a CSV hint. */
  espDir?: string
  log: Logger
}

/** Parse a BOOTX64.CSV hint (UTF-16, optional BOM): loader file name, label. */
export function parseBootCsv(data: Buffer): {loader: string; label: string} {
  let text: string
  if (data.length >= 2 && data[0] === 0xfe && data[1] === 0xff) text = Buffer.from(data.subarray(2)).swap16().toString('utf16le')
  else if (data.length >= 2 && data[0] === 0xff && data[1] === 0xfe) text = data.subarray(2).toString('utf16le')
  else text = data.toString('utf16le')
  const fields = text.split(',')
  if (fields.length < 2 || !fields[0]!.trim()) throw new CommandExecutionError(`Malformed EFI boot CSV: ${JSON.stringify(text.slice(0, 200))}`)
  return {loader: fields[0]!.trim(), label: fields[1]!.trim()}
}

function toEfiPath(rel: string): string {
  return `\\${rel.split('/').filter(Boolean).join('\\')}`
}

/**
 * Create one efibootmgr entry per loader on (disk, partition), as IPA's _run_efibootmgr: records
 * with the same label are removed first, and so are records for the same loader file on the same
 * partition (stale entries of an earlier deploy). Returns the entries created.
 */
export async function addUefiBootEntries(args: UefiEntryArgs): Promise<{label: string; loader: string}[]> {
  requireUefiFirmware()
  const {disk, partition, log} = args
  if (!args.loaders.length) throw new CommandExecutionError(`No EFI boot loader to register for ${disk} partition ${partition}`)
  const table = await partitionTable(disk).catch(() => undefined)
  const entry = table?.partitions.find((p) => partitionNumber(p.node) === partition)
  const partId = table?.label === 'gpt' ? entry?.uuid?.toLowerCase() : table?.id?.toLowerCase().replace(/^0x/, '')
  const created: {label: string; loader: string}[] = []
  let id = 1
  for (const rel of args.loaders) {
    let loader: string
    let label: string
    if (rel.toLowerCase().endsWith('.csv')) {
      if (!args.espDir) throw new CommandExecutionError(`The EFI boot CSV ${rel} cannot be read: the ESP is not mounted`)
      const csv = parseBootCsv(await readFile(path.join(args.espDir, rel)))
      loader = toEfiPath(path.posix.join(path.posix.dirname(rel), csv.loader))
      label = csv.label
    } else {
      loader = toEfiPath(rel)
      label = `${args.label ?? 'ironic'}${id}`
    }
    if (args.labelSuffix) label = `${label} ${args.labelSuffix}`
    for (const rec of await bootRecords()) {
      const sameLabel = rec.text === label || rec.text.startsWith(`${label}\t`) || rec.text.startsWith(`${label} `)
      const t = rec.text.toLowerCase()
      const samePlace = partId !== undefined && t.includes(`hd(${partition},`) && t.includes(partId) && t.includes(loader.toLowerCase())
      if (sameLabel || samePlace) {
        log.debug('removing a stale UEFI boot entry', {boot: rec.num, record: rec.text})
        await run('efibootmgr', ['-b', rec.num, '-B'])
      }
    }
    log.info('adding a UEFI boot entry', {disk, partition, loader, label})
    await run('efibootmgr', ['-v', '-c', '-d', disk, '-p', String(partition), '-w', '-L', label, '-l', loader])
    created.push({label, loader})
    id++
  }
  return created
}

// ------------------------------------------------------------------------------------------------
// Filling an empty ESP from the deployed root filesystem

const CHROOT_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p)
    return true
  } catch {
    return false
  }
}

/** grub-install / grub2-install inside the image, if it has one (name without the path). */
export async function imageGrubInstall(root: string): Promise<'grub' | 'grub2' | undefined> {
  for (const bin of ['grub2', 'grub']) {
    for (const dir of ['usr/sbin', 'sbin', 'usr/bin', 'bin']) {
      if (await exists(path.join(root, dir, `${bin}-install`))) return bin as 'grub' | 'grub2'
    }
  }
  return undefined
}

/** Directory `rel` inside `root`, refusing symlinks on the way (an image must not redirect us to the ramdisk). */
async function insideRoot(root: string, rel: string): Promise<string | undefined> {
  let cur = root
  for (const part of rel.split('/').filter(Boolean)) {
    cur = path.join(cur, part)
    let st
    try {
      st = await lstat(cur)
    } catch {
      return undefined
    }
    if (st.isSymbolicLink() || !st.isDirectory()) return undefined
  }
  return cur
}

/**
 * Copy loader files the root filesystem ships under /boot/efi/EFI (images built with the ESP
 * content inside the root) into the ESP. Returns whether anything was copied.
 */
export async function copyEfiAssetsFromRoot(root: string, espDir: string, log: Logger): Promise<boolean> {
  const src = await insideRoot(root, 'boot/efi/EFI')
  if (!src) return false
  const files = await walkFiles(src)
  if (!files.length) return false
  await mkdir(path.join(espDir, 'EFI'), {recursive: true})
  // verbatimSymlinks + no dereference: symlinks are not followed out of the image (vfat cannot hold them anyway).
  await cp(src, path.join(espDir, 'EFI'), {
    recursive: true,
    force: true,
    dereference: false,
    verbatimSymlinks: true,
    filter: async (s) => !(await lstat(s)).isSymbolicLink(),
  })
  log.info('copied the EFI loader files of the root filesystem into the ESP', {files: files.length})
  return true
}

/** Bind /dev, /proc, /sys (and /run when present) into `root` for a chroot, run fn, unmount them all. */
async function withChrootMounts<T>(root: string, fn: () => Promise<T>, log: Logger): Promise<T> {
  const mounted: string[] = []
  try {
    for (const fs of ['/dev', '/proc', '/sys', '/run']) {
      const target = await insideRoot(root, fs.slice(1))
      if (!target) {
        if (fs === '/run') continue
        throw new CommandExecutionError(`The image has no ${fs} directory to bind-mount for the bootloader installation`)
      }
      await run('mount', ['-o', 'bind', fs, target])
      mounted.push(target)
    }
    return await fn()
  } finally {
    for (const m of mounted.reverse()) {
      if (!(await umount(m, log))) await run('umount', ['-l', m], {allowFailure: true})
    }
  }
}

async function chroot(root: string, args: string[], log: Logger, env: Record<string, string> = {}): Promise<void> {
  log.info('running in the image', {command: args.join(' ')})
  try {
    await run('chroot', [root, ...args], {env: {PATH: CHROOT_PATH, LC_ALL: 'C', ...env}, timeoutMs: 600_000})
  } catch (err) {
    if (err instanceof CommandFailedError) throw new CommandExecutionError(`${args[0]} in the deployed image failed: ${err.stderr.trim() || err.message}`)
    throw err
  }
}

/** grub-install for x86_64-efi inside the image (ESP mounted at /boot/efi), no NVRAM writes, then grub-mkconfig. */
async function grubInstallEfi(root: string, espDevice: string, bin: 'grub' | 'grub2', log: Logger): Promise<void> {
  const espAt = path.join(root, 'boot/efi')
  if (!(await insideRoot(root, 'boot'))) throw new CommandExecutionError('The image has no /boot directory for GRUB')
  await mkdir(espAt, {recursive: true})
  await withChrootMounts(
    root,
    () =>
      withMount(
        espDevice,
        async () => {
          await chroot(root, [`${bin}-install`, '--target=x86_64-efi', '--efi-directory=/boot/efi', '--no-nvram'], log)
          // The removable-media path too, as IPA: boots even if the NVRAM entry is lost.
          await chroot(root, [`${bin}-install`, '--target=x86_64-efi', '--efi-directory=/boot/efi', '--no-nvram', '--removable'], log).catch((e: unknown) =>
            log.warn('grub-install --removable failed (ignored)', {err: (e as Error).message}),
          )
          await chroot(root, [`${bin}-mkconfig`, '-o', `/boot/${bin}/grub.cfg`], log, {GRUB_DISABLE_OS_PROBER: 'true'})
        },
        {at: espAt, log},
      ),
    log,
  )
}

/** BIOS: grub-install onto the disk and grub-mkconfig, inside the image. */
async function grubInstallBios(root: string, disk: string, bin: 'grub' | 'grub2', log: Logger): Promise<void> {
  await withChrootMounts(
    root,
    async () => {
      await chroot(root, [`${bin}-install`, '--target=i386-pc', disk], log)
      await chroot(root, [`${bin}-mkconfig`, '-o', `/boot/${bin}/grub.cfg`], log, {GRUB_DISABLE_OS_PROBER: 'true'})
    },
    log,
  )
}

// ------------------------------------------------------------------------------------------------
// image.install_bootloader

export interface InstallBootloaderArgs {
  root_uuid?: string | null
  efi_system_part_uuid?: string | null
  prep_boot_part_uuid?: string | null
  target_boot_mode?: string | null
  ignore_bootloader_failure?: boolean | null
  software_raid?: boolean | null
}

export interface BootloaderContext {
  config: AgentConfig
  log: Logger
  installDevice: () => Promise<string>
  /** What the last prepare_image wrote ('partition' or 'whole-disk'), if it ran in this agent. */
  imageType?: 'partition' | 'whole-disk'
  /** Software RAID (hardware/raid.ts), loaded lazily. */
  softRaid?: (args: {rootUuid?: string | null; efiSystemPartUuid?: string | null; targetBootMode: 'uefi' | 'bios'}) => Promise<void>
  /** True for an md device (IPA's is_md_device): the install device is software RAID. */
  isSoftRaidDevice?: (device: string) => Promise<boolean>
  /** For tests: where the UEFI firmware directory is looked for. */
  firmwareDir?: string
}

/** A root_uuid that names a whole disk (IPA: the MBR disk identifier) rather than a filesystem. */
function isDiskIdentifier(uuid: string | null | undefined): boolean {
  return !uuid || /^0x[0-9a-f]{8}$/i.test(uuid)
}

/**
 * UEFI: the ESP of the install device (by type, else by efi_system_part_uuid) is mounted; if it
 * holds no loader and this is a partition image, it is filled from the image's root filesystem
 * (/boot/efi/EFI copied, else grub-install in a chroot); then efibootmgr entries are added.
 */
export async function setupUefi(ctx: BootloaderContext, device: string, args: InstallBootloaderArgs): Promise<{loaders: string[]; source: string}> {
  const {log} = ctx
  requireUefiFirmware(ctx.firmwareDir)
  await rescanDevice(device, log)
  const esp = await findEsp(device, args.efi_system_part_uuid)
  const partitionImage = ctx.imageType === 'partition' || (ctx.imageType === undefined && !isDiskIdentifier(args.root_uuid))
  return withMount(
    esp.device,
    async (espDir) => {
      let loaders = await findEfiLoaders(espDir)
      let source = 'esp'
      if (!loaders.length && partitionImage && args.root_uuid) {
        log.warn('Empty EFI partition detected: looking for the boot loader in the image', {esp: esp.device})
        const root = await partitionByUuid(device, args.root_uuid)
        const missing: string[] = []
        source = await withMount(
          root.device,
          async (rootDir) => {
            if (await copyEfiAssetsFromRoot(rootDir, espDir, log)) {
              if ((await findEfiLoaders(espDir)).length) return 'root-efi-copy'
              missing.push('the files under /boot/efi/EFI of the image hold no known EFI loader')
            } else missing.push('the image has no /boot/efi/EFI')
            const bin = await imageGrubInstall(rootDir)
            if (!bin) {
              missing.push('the image has no grub-install or grub2-install')
              return 'none'
            }
            // grub-install writes into the image: read-write from here on.
            await run('mount', ['-o', 'remount,rw', rootDir])
            // grub-install wants the ESP at /boot/efi of the image: unmount ours first.
            await run('sync', []).catch(() => undefined)
            await umount(espDir, log)
            try {
              await grubInstallEfi(rootDir, esp.device, bin, log)
            } finally {
              await run('mount', [esp.device, espDir])
            }
            return 'grub-install'
          },
          // Read-only while only reading: the root filesystem stays byte for byte the image.
          {log, options: ['ro']},
        )
        loaders = await findEfiLoaders(espDir)
        if (!loaders.length) {
          throw new CommandExecutionError(
            `No EFI boot loader found on the EFI system partition ${esp.device} of ${device}, and none could be installed from the image: ${missing.join('; ') || 'grub-install left no loader'}.`,
          )
        }
      }
      if (!loaders.length) {
        throw new CommandExecutionError(`No EFI boot loader found on the EFI system partition ${esp.device} of ${device}: the image is not UEFI-bootable.`)
      }
      await addUefiBootEntries({disk: device, partition: esp.number, loaders, espDir, log})
      return {loaders, source}
    },
    {log},
  )
}

/** image.install_bootloader. */
export async function installBootloader(ctx: BootloaderContext, args: InstallBootloaderArgs): Promise<null> {
  const {config, log} = ctx
  const mode = args.target_boot_mode ?? 'bios'
  if (mode !== 'uefi' && mode !== 'bios') throw new InvalidCommandParamsError(`target_boot_mode must be 'uefi' or 'bios', got ${JSON.stringify(mode)}`)
  const ignore = args.ignore_bootloader_failure ?? config.ignoreBootloaderFailure ?? false
  // As IPA: software RAID when the caller says so, or when the install device is an md device
  // (Ironic 21.4 does not send software_raid to the agent).
  const device = args.software_raid ? undefined : await ctx.installDevice()
  if (device === undefined || (ctx.isSoftRaidDevice && (await ctx.isSoftRaidDevice(device)))) {
    if (!ctx.softRaid) throw new CommandExecutionError('software RAID bootloader installation is not available')
    try {
      await ctx.softRaid({rootUuid: args.root_uuid, efiSystemPartUuid: args.efi_system_part_uuid, targetBootMode: mode})
    } catch (err) {
      if (!ignore) throw err
      log.warn('Ignoring the failure to install a boot loader on the software RAID holders (ignore_bootloader_failure)', {device, err: (err as Error).message})
    }
    return null
  }
  try {
    if (mode === 'uefi') {
      const r = await setupUefi(ctx, device, args)
      log.info('UEFI boot loader set up', {device, ...r})
      return null
    }
    // BIOS
    if (isDiskIdentifier(args.root_uuid) || ctx.imageType === 'whole-disk') {
      log.info('Not installing GRUB: the root UUID names a whole disk image, which brings its own boot loader', {device, root_uuid: args.root_uuid ?? null})
      return null
    }
    if (!config.enableBiosBootloaderInstall) {
      log.info("Not installing GRUB for BIOS: ipa-enable-bios-bootloader-install is off (IPA's default), the image must boot on its own", {device})
      return null
    }
    const root = await partitionByUuid(device, args.root_uuid!)
    await withMount(
      root.device,
      async (rootDir) => {
        const bin = await imageGrubInstall(rootDir)
        if (!bin) {
          throw new CommandExecutionError(
            `Cannot install GRUB for BIOS boot on ${device}: the image on ${root.device} has no grub-install or grub2-install (usr/sbin, sbin).`,
          )
        }
        await grubInstallBios(rootDir, device, bin, log)
      },
      {log},
    )
    log.info('GRUB installed for BIOS boot', {device})
    return null
  } catch (err) {
    if (err instanceof ToolMissingError) {
      if (!ignore) throw new CommandExecutionError(err.message)
    } else if (!ignore) throw err
    log.error('Error setting up bootloader (ignored: ignore_bootloader_failure)', {err: (err as Error).message})
    return null
  }
}
