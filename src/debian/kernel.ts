/**
 * The Debian kernel for the tiny flavour: `linux-image-amd64` resolved to the real
 * `linux-image-<abi>-amd64` package, `boot/vmlinuz-*` as the kernel, and a chosen set of modules
 * with their dependency closure (read from each module's `.modinfo` ELF section in pure TS: no
 * modinfo on the host), firmware they declare (from the firmware packages chosen), and
 * `depmod -b` output for exactly that set.
 *
 * bookworm's 6.1 kernel ships uncompressed, signed `.ko` files (CONFIG_MODULE_COMPRESS_NONE=y), and
 * that is how they go into the image: the initramfs is compressed as a whole anyway.
 */
import {mkdtemp, readFile, readdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join, posix} from 'node:path'
import {tmpdir} from 'node:os'
import {EXIT_FAILURE, UserError, type UserErrorOptions} from '../common/errors.js'
import {run} from '../common/exec.js'
import {readElfSection} from './elf.js'
import {addUsrMergeLinks, unpackDebCached} from './extract.js'
import {fetchPackages, resolvePackages, type AptOptions, type ResolvedPackage} from './packages.js'
import {DirSink, type TreeSink} from './sink.js'
import {measureBuffers, type SizeFigures} from './sizes.js'

/**
 * Module names (as `modprobe` takes them; `-` and `_` are the same; aliases such as `iso9660` work
 * too) by purpose. The default set covers the disk controllers and NICs of mainstream servers and
 * the usual hypervisors that work without non-free firmware; the other sets are opt-in.
 */
export const MODULE_SETS = {
  /** Disk controllers, the SCSI/ATA/NVMe layers above them, USB mass storage (BMC virtual media). */
  storage: [
    'virtio_pci',
    'virtio_blk',
    'virtio_scsi',
    'ahci',
    'ata_piix',
    'nvme',
    'sd_mod',
    'sr_mod',
    'sg',
    'megaraid_sas',
    'mpt3sas',
    'hpsa',
    'smartpqi',
    'aacraid',
    'mptsas',
    'vmw_pvscsi',
    'xhci_pci',
    'ehci_pci',
    'ohci_pci',
    'uhci_hcd',
    'usb_storage',
    'uas',
  ],
  /** NICs that work without non-free firmware: virtual, Intel, Mellanox ConnectX-4 and later, Broadcom NetXtreme(-E), Realtek. */
  network: ['virtio_net', 'e1000', 'e1000e', 'igb', 'igc', 'ixgbe', 'i40e', 'ice', 'mlx5_core', 'bnxt_en', 'tg3', 'vmxnet3', 'r8169', '8021q'],
  /** Filesystems the agent creates or reads: the ESP and config drives (vfat, iso9660), ext4; efivarfs for efibootmgr. */
  filesystems: ['vfat', 'nls_cp437', 'nls_iso8859_1', 'nls_utf8', 'nls_ascii', 'isofs', 'ext4', 'efivarfs'],
  /** Software RAID (IPA's software RAID support). */
  raid: ['md_mod', 'raid0', 'raid1', 'raid10', 'raid456', 'linear'],
  /** Loop devices, in-band IPMI for ipmitool, USB keyboards on the (BMC) console. */
  misc: ['loop', 'ipmi_si', 'ipmi_devintf', 'ipmi_ssif', 'usbhid', 'hid_generic'],
} as const

/** Opt-in sets (not in DEFAULT_MODULES). */
export const EXTRA_MODULE_SETS = {
  /** Older or rarer HBAs. */
  storageExtra: ['mptspi', 'isci', 'pm80xx', 'mvsas', '3w-9xxx', '3w-sas', 'arcmsr', 'mmc_block', 'hv_storvsc', 'xen-blkfront'],
  /** Less common or older NICs (Mellanox ConnectX-3: mlx4_en, 240 kB of xz), SR-IOV VFs and cloud NICs. */
  networkExtra: ['mlx4_en', 'igbvf', 'ixgbevf', 'iavf', 'be2net', 'enic', 'cxgb4', 'sfc', 'ena', 'gve', 'hv_netvsc', 'xen-netfront', 'bonding'],
  /** NICs that do not work at all without non-free firmware (firmware-bnx2, firmware-bnx2x, firmware-qlogic from non-free-firmware). */
  networkNonFreeFirmware: ['bnx2', 'bnx2x', 'qede'],
  /** Filesystems for partition images with other root filesystems (sizes raw: xfs 4.2 MB, btrfs 3.9 MB). */
  filesystemsExtra: ['xfs', 'btrfs', 'dm_mod'],
} as const

export const DEFAULT_MODULES: readonly string[] = Object.values(MODULE_SETS).flat()

/**
 * The modules of a build: DEFAULT_MODULES plus `extra`, where an entry is a module name or alias, or
 * `@set` for one of MODULE_SETS / EXTRA_MODULE_SETS (`@networkExtra`). An unknown set is an error.
 */
export function moduleList(extra: readonly string[] = []): string[] {
  const sets: Record<string, readonly string[]> = {...MODULE_SETS, ...EXTRA_MODULE_SETS}
  const out = [...DEFAULT_MODULES]
  for (const m of extra) {
    if (!m.startsWith('@')) {
      out.push(m)
      continue
    }
    const set = sets[m.slice(1)]
    if (!set)
      throw new KernelModuleError(
        `no module set '${m}': the sets are ${Object.keys(sets)
          .map((k) => `@${k}`)
          .join(', ')}`,
      )
    out.push(...set)
  }
  return [...new Set(out)]
}

/** Firmware packages searched by default: only `main` (free). Non-free firmware (firmware-misc-nonfree, firmware-bnx2x, …) lives in `non-free-firmware`, which must be in apt's sources to use. */
export const DEFAULT_FIRMWARE_PACKAGES: readonly string[] = ['firmware-linux-free']

/** An unknown module or @set (exit 2), or a kernel package rdk cannot use (exit 1). */
export class KernelModuleError extends UserError {
  constructor(message: string, opts: UserErrorOptions = {}) {
    super(message, opts)
    this.name = 'KernelModuleError'
  }
}

export interface ModuleInfo {
  /** Canonical name (`_` for `-`). */
  name: string
  /** Path relative to `lib/modules/<kver>/` (e.g. `kernel/drivers/net/virtio_net.ko`). */
  path: string
  size: number
  depends: string[]
  softdeps: string[]
  aliases: string[]
  firmware: string[]
}

export interface KernelOptions extends AptOptions {
  cacheDir: string
  /** Kernel package (a meta-package is followed to the image package). Default `linux-image-amd64`. */
  package?: string
  /** Modules wanted (names or aliases). Default DEFAULT_MODULES. */
  modules?: readonly string[]
  /** Firmware packages to take declared firmware from. Default DEFAULT_FIRMWARE_PACKAGES. */
  firmwarePackages?: readonly string[]
  /** Unknown module names are an error unless this is set (then they are reported in `unknown`). */
  ignoreUnknown?: boolean
}

export interface PreparedKernel {
  kernelVersion: string
  /** The real image package (linux-image-<abi>-amd64). */
  package: ResolvedPackage
  /** Host path of the bzImage (inside the cache: copy it, do not modify it). */
  vmlinuz: string
  /** Host path of the kernel's config. */
  config: string
  /** Host path of the unpacked `usr/lib/modules/<kver>`. */
  modulesDir: string
  /** The selected modules and their dependencies, sorted by name. */
  modules: ModuleInfo[]
  /** Requested names that are built into the kernel (nothing to ship). */
  builtin: string[]
  /** Requested names found nowhere (only with ignoreUnknown). */
  unknown: string[]
  firmware: {name: string; hostPath: string; size: number; package: string}[]
  /** Firmware declared by a selected module and absent from the firmware packages. */
  missingFirmware: {module: string; firmware: string}[]
  sizes: {vmlinuz: number; modules: number; firmware: number}
  timings: {resolveMs: number; fetchMs: number; unpackMs: number; indexMs: number; unpackHit: boolean}
}

export function canonicalModuleName(name: string): string {
  return name.replace(/-/g, '_')
}

/** Parse a `.modinfo` section (NUL-separated key=value strings). */
export function parseModinfo(section: Buffer): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const s of section.toString('utf8').split('\0')) {
    const eq = s.indexOf('=')
    if (eq <= 0) continue
    const k = s.slice(0, eq)
    const list = out.get(k) ?? []
    list.push(s.slice(eq + 1))
    out.set(k, list)
  }
  return out
}

function softdepNames(values: readonly string[]): string[] {
  // "pre: a b post: c"
  return values.flatMap((v) => v.split(/\s+/).filter((t) => t && !/^(pre|post):$/.test(t)))
}

/** modinfo of one `.ko` file. */
export function moduleInfoFromBuffer(buf: Buffer, relPath: string): ModuleInfo {
  const sec = readElfSection(buf, '.modinfo', relPath)
  if (!sec) throw new KernelModuleError(`${relPath} has no .modinfo section`, {exit: EXIT_FAILURE})
  const mi = parseModinfo(sec)
  const base = posix.basename(relPath).replace(/\.ko(\.(xz|gz|zst))?$/, '')
  return {
    name: canonicalModuleName(mi.get('name')?.[0] ?? base),
    path: relPath,
    size: buf.length,
    depends: (mi.get('depends') ?? [])
      .flatMap((d) => d.split(','))
      .filter(Boolean)
      .map(canonicalModuleName),
    softdeps: softdepNames(mi.get('softdep') ?? []),
    aliases: mi.get('alias') ?? [],
    firmware: mi.get('firmware') ?? [],
  }
}

async function walk(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(join(dir, rel), {withFileTypes: true})) {
    const p = rel ? `${rel}/${e.name}` : e.name
    if (e.isDirectory()) out.push(...(await walk(dir, p)))
    else if (e.isFile()) out.push(p)
  }
  return out
}

const INDEX_FILE = '.rdk-modinfo.json'
const INDEX_VERSION = 1

/** modinfo of every module in an unpacked modules directory (cached next to it). */
export async function moduleIndex(modulesDir: string): Promise<ModuleInfo[]> {
  const indexPath = join(modulesDir, INDEX_FILE)
  try {
    const cached = JSON.parse(await readFile(indexPath, 'utf8')) as {version: number; modules: ModuleInfo[]}
    if (cached.version === INDEX_VERSION) return cached.modules
  } catch {
    // build it
  }
  const files = (await walk(modulesDir)).filter((p) => /\.ko(\.(xz|gz|zst))?$/.test(p)).sort()
  const modules: ModuleInfo[] = []
  for (const rel of files) {
    if (!rel.endsWith('.ko'))
      throw new KernelModuleError(`${rel}: compressed modules are not supported (bookworm's kernel ships plain .ko files)`, {exit: EXIT_FAILURE})
    modules.push(moduleInfoFromBuffer(await readFile(join(modulesDir, rel)), rel))
  }
  const tmp = `${indexPath}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify({version: INDEX_VERSION, modules}))
  await rename(tmp, indexPath)
  return modules
}

function globToRegExp(glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*') re += '.*'
    else if (c === '?') re += '.'
    else if (c === '[') {
      const end = glob.indexOf(']', i + 1)
      if (end < 0) re += '\\['
      else {
        re +=
          '[' +
          glob
            .slice(i + 1, end)
            .replace(/^!/, '^')
            .replace(/\\/g, '\\\\') +
          ']'
        i = end
      }
    } else re += c.replace(/[.+^${}()|\\/]/g, '\\$&')
  }
  return new RegExp(`^${re}$`)
}

/** Modules whose alias pattern matches `name` (modprobe's fnmatch), in index order. */
export function modulesByAlias(index: readonly ModuleInfo[], name: string): ModuleInfo[] {
  return index.filter((m) => m.aliases.some((a) => a === name || (/[*?[]/.test(a) && globToRegExp(a).test(name))))
}

export interface ModuleSelection {
  modules: ModuleInfo[]
  builtin: string[]
  unknown: string[]
  /** Why each module is in: `requested`, `dependency of X`, `softdep of X`. */
  reasons: Record<string, string>
}

/**
 * The closure of `wanted` over `depends=` (and `softdep=`, resolved by name or alias; a softdep
 * that is missing is ignored, as modprobe does). `builtinNames` are the kernel's built-in modules.
 */
export function selectModules(index: readonly ModuleInfo[], wanted: readonly string[], builtinNames: ReadonlySet<string>): ModuleSelection {
  const byName = new Map(index.map((m) => [m.name, m]))
  const chosen = new Map<string, ModuleInfo>()
  const reasons: Record<string, string> = {}
  const builtin: string[] = []
  const unknown: string[] = []
  const queue: {m: ModuleInfo; reason: string}[] = []
  const lookup = (name: string): ModuleInfo[] => {
    const m = byName.get(canonicalModuleName(name))
    return m ? [m] : modulesByAlias(index, name)
  }
  for (const w of wanted) {
    const found = lookup(w)
    if (found.length) for (const m of found) queue.push({m, reason: 'requested'})
    else if (builtinNames.has(canonicalModuleName(w))) builtin.push(w)
    else unknown.push(w)
  }
  while (queue.length) {
    const {m, reason} = queue.shift()!
    if (chosen.has(m.name)) continue
    chosen.set(m.name, m)
    reasons[m.name] = reason
    for (const d of m.depends) {
      const dm = byName.get(d)
      if (!dm) {
        if (builtinNames.has(d)) continue
        throw new KernelModuleError(`module ${m.name} depends on ${d}, which is not in the kernel package`, {exit: EXIT_FAILURE})
      }
      queue.push({m: dm, reason: `dependency of ${m.name}`})
    }
    for (const s of m.softdeps) for (const sm of lookup(s)) queue.push({m: sm, reason: `softdep of ${m.name}`})
  }
  return {modules: [...chosen.values()].sort((a, b) => a.name.localeCompare(b.name)), builtin, unknown, reasons}
}

function builtinModuleNames(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .filter(Boolean)
      .map((l) => canonicalModuleName(posix.basename(l).replace(/\.ko$/, ''))),
  )
}

const KERNEL_FILTER = (e: {path: string; type: string}) =>
  e.type === 'directory' || /^boot\/(vmlinuz|config)-/.test(e.path) || e.path.startsWith('usr/lib/modules/')
const FIRMWARE_FILTER = (e: {path: string; type: string}) => e.type === 'directory' || e.path.startsWith('usr/lib/firmware/')

/**
 * Resolve, fetch (cached, verified), unpack (cached) the kernel package and pick modules and
 * firmware. Nothing is written to an image yet: see installKernelModules().
 */
export async function prepareKernel(opts: KernelOptions): Promise<PreparedKernel> {
  const t0 = Date.now()
  const meta = opts.package ?? 'linux-image-amd64'
  const resolved = await resolvePackages([meta], {...opts, exclude: ['linux-base', 'kmod', 'initramfs-tools', 'linux-initramfs-tool']})
  const image = resolved.find((p) => /^linux-image-\d.*$/.test(p.name) && !p.name.endsWith('-dbg')) ?? resolved[0]!
  const firmwarePkgs = (opts.firmwarePackages ?? DEFAULT_FIRMWARE_PACKAGES).length
    ? await resolvePackages(opts.firmwarePackages ?? DEFAULT_FIRMWARE_PACKAGES, {...opts, noDependencies: true})
    : []
  const t1 = Date.now()
  const [debPath, ...fwDebs] = await fetchPackages([image, ...firmwarePkgs], opts.cacheDir, opts)
  const t2 = Date.now()
  const unpacked = await unpackDebCached(debPath!, image.sha256, opts.cacheDir, {tag: 'kernel', filter: KERNEL_FILTER, source: image.name})
  const fwDirs = []
  for (let i = 0; i < firmwarePkgs.length; i++) {
    fwDirs.push({
      pkg: firmwarePkgs[i]!,
      dir: (await unpackDebCached(fwDebs[i]!, firmwarePkgs[i]!.sha256, opts.cacheDir, {tag: 'firmware', filter: FIRMWARE_FILTER})).dir,
    })
  }
  const t3 = Date.now()

  const boot = await readdir(join(unpacked.dir, 'boot'))
  const vmlinuz = boot.find((n) => n.startsWith('vmlinuz-'))
  if (!vmlinuz) throw new KernelModuleError(`${image.name} ${image.version} has no boot/vmlinuz-*`, {exit: EXIT_FAILURE})
  const kernelVersion = vmlinuz.slice('vmlinuz-'.length)
  const modulesDir = join(unpacked.dir, 'usr/lib/modules', kernelVersion)
  const index = await moduleIndex(modulesDir)
  const builtinNames = builtinModuleNames(await readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch(() => ''))
  const t4 = Date.now()

  const sel = selectModules(index, opts.modules ?? DEFAULT_MODULES, builtinNames)
  if (sel.unknown.length && !opts.ignoreUnknown) {
    throw new KernelModuleError(`no such kernel module (or alias) in ${image.name} ${image.version}: ${sel.unknown.join(', ')}`, {
      hint: 'give a module name or alias that the kernel package ships, or an @set (see --help of --kernel-module)',
    })
  }

  const firmware: PreparedKernel['firmware'] = []
  const missingFirmware: PreparedKernel['missingFirmware'] = []
  const seen = new Set<string>()
  for (const m of sel.modules) {
    for (const fw of m.firmware) {
      if (seen.has(fw)) continue
      seen.add(fw)
      let found = false
      for (const {pkg, dir} of fwDirs) {
        const hostPath = join(dir, 'usr/lib/firmware', fw)
        const st = await stat(hostPath).catch(() => undefined)
        if (st?.isFile()) {
          firmware.push({name: fw, hostPath, size: st.size, package: pkg.name})
          found = true
          break
        }
      }
      if (!found) missingFirmware.push({module: m.name, firmware: fw})
    }
  }
  return {
    kernelVersion,
    package: image,
    vmlinuz: join(unpacked.dir, 'boot', vmlinuz),
    config: join(unpacked.dir, 'boot', `config-${kernelVersion}`),
    modulesDir,
    modules: sel.modules,
    builtin: sel.builtin,
    unknown: sel.unknown,
    firmware,
    missingFirmware,
    sizes: {
      vmlinuz: (await stat(join(unpacked.dir, 'boot', vmlinuz))).size,
      modules: sel.modules.reduce((n, m) => n + m.size, 0),
      firmware: firmware.reduce((n, f) => n + f.size, 0),
    },
    timings: {resolveMs: t1 - t0, fetchMs: t2 - t1, unpackMs: t3 - t2, indexMs: t4 - t3, unpackHit: unpacked.hit},
  }
}

/** Files of lib/modules/<kver> that modprobe/depmod use besides the modules themselves. */
const KERNEL_METADATA = ['modules.builtin', 'modules.builtin.modinfo', 'modules.order']

export interface InstalledModules {
  /** Image paths written (modules, metadata, depmod output, firmware). */
  files: string[]
  /** depmod's output files (names inside lib/modules/<kver>). */
  depmodFiles: string[]
  /** modules.dep as depmod wrote it. */
  modulesDep: string
  sizes: SizeFigures
}

/**
 * Put the selected modules (at usr/lib/modules/<kver>/…, reached through the /lib → usr/lib link,
 * which this adds with the other usr-merge links),
 * modules.builtin/.order, depmod's index files and the firmware (usr/lib/firmware/…) into `sink`.
 * depmod runs on a private staging copy (`depmod -b STAGE -C STAGE/etc/depmod.d KVER`, so the host's
 * /etc/depmod.d is not read). Sizes are measured unless `compress` is false.
 */
export async function installKernelModules(
  kernel: PreparedKernel,
  sink: TreeSink,
  opts: {workDir?: string; compress?: boolean} = {},
): Promise<InstalledModules> {
  const stage = await mkdtemp(join(opts.workDir ?? tmpdir(), 'rdk-kmod-'))
  try {
    addUsrMergeLinks(sink) // modprobe and depmod look in /lib/modules
    const st = new DirSink(stage)
    addUsrMergeLinks(st)
    st.addDir('etc/depmod.d')
    const kdir = `usr/lib/modules/${kernel.kernelVersion}`
    for (const m of kernel.modules) st.addFileFromHost(`${kdir}/${m.path}`, join(kernel.modulesDir, m.path), {mode: 0o644})
    for (const f of KERNEL_METADATA) {
      const host = join(kernel.modulesDir, f)
      if (await stat(host).catch(() => undefined)) st.addFileFromHost(`${kdir}/${f}`, host, {mode: 0o644})
    }
    await run('depmod', ['-b', stage, '-C', join(stage, 'etc/depmod.d'), kernel.kernelVersion])
    const all = (await walk(join(stage, kdir))).sort()
    const depmodFiles = all.filter((p) => !p.includes('/') && !KERNEL_METADATA.includes(p))
    const buffers: Buffer[] = []
    const files: string[] = []
    for (const rel of all) {
      const data = await readFile(join(stage, kdir, rel))
      sink.addFile(`${kdir}/${rel}`, data, {mode: 0o644, source: 'kernel'})
      files.push(`${kdir}/${rel}`)
      buffers.push(data)
    }
    for (const fw of kernel.firmware) {
      const data = await readFile(fw.hostPath)
      sink.addFile(`usr/lib/firmware/${fw.name}`, data, {mode: 0o644, source: fw.package})
      files.push(`usr/lib/firmware/${fw.name}`)
      buffers.push(data)
    }
    return {
      files,
      depmodFiles,
      modulesDep: await readFile(join(stage, kdir, 'modules.dep'), 'utf8'),
      sizes: await measureBuffers(buffers, {compress: opts.compress ?? true}),
    }
  } finally {
    await rm(stage, {recursive: true, force: true})
  }
}
