/**
 * The deploy toolset of the tiny flavour: the Debian packages whose programs the agent runs, and
 * exactly which executables (and the few data files) to keep from each, plus the shared-library
 * closure of those executables — nothing else (no docs, man pages, locales, maintainer scripts).
 * busybox (Debian's dynamically linked build: half the static one's size, and libc is there anyway) provides init's shell, udhcpc and the small utilities; its applet
 * links are only created where no real tool is installed.
 *
 * Decisions (docs/debian.md has the reasons): udev (systemd-udevd + udevadm) rather than mdev, since
 * the agent calls `udevadm settle` / `udevadm info` and lsblk/IPA rely on udev's by-id/by-path data;
 * no hwdb.bin (the udev package ships only hwdb.d sources, ~8.9 MB raw, for vendor names nobody
 * reads here); coreutils' shred/dd/sync (busybox shred has no --verbose and no long options);
 * kmod's modprobe (reads the depmod output kernel.ts produces; udevd uses libkmod anyway).
 */
import {lstat, readFile, readdir, readlink} from 'node:fs/promises'
import {join} from 'node:path'
import {elfClosure, type ClosureFile} from './elf.js'
import {addUsrMergeLinks, stagePackagesCached} from './extract.js'
import {fetchPackagesWithStats, resolvePackages, type AptOptions, type FetchStats, type ResolvedPackage} from './packages.js'
import type {TreeSink} from './sink.js'
import {measureBuffers, type SizeFigures} from './sizes.js'

export interface ToolPackage {
  /** Debian package name. */
  package: string
  /**
   * Executables to keep: a bare name is looked up as usr/sbin/NAME then usr/bin/NAME (after
   * usr-merge) and must come from this package; anything with a '/' is an image path.
   */
  executables: readonly string[]
  /** Data files (image paths) from this package; a path ending in '/' takes the whole directory. */
  data?: readonly string[]
  /** What the agent uses it for. */
  why: string
}

const UDEV_RULES = ['50-udev-default.rules', '60-block.rules', '60-cdrom_id.rules', '60-persistent-storage.rules', '80-drivers.rules']

/** The agent's deploy toolset (every program src/agent runs, plus what init needs). */
// biome-ignore format: a table, one package per line
export const DEPLOY_TOOLSET: readonly ToolPackage[] = [
  {package: 'qemu-utils', executables: ['qemu-img'], why: 'image conversion/writing (standby.write_image)'},
  {package: 'gdisk', executables: ['sgdisk'], why: 'GPT zapping, partition tables'},
  {package: 'parted', executables: ['parted', 'partprobe'], why: 'partitioning, re-reading tables'},
  {package: 'util-linux', executables: ['lsblk', 'blkid', 'wipefs', 'blockdev', 'lscpu', 'prlimit', 'mkswap'], why: 'disk/CPU inventory, erasing signatures, qemu-img under an address-space cap (prlimit), swap partitions (mkswap)'},
  {package: 'mount', executables: ['mount', 'umount', 'losetup'], why: 'mounting config drives / partitions, loop devices'},
  {package: 'fdisk', executables: ['sfdisk'], why: 'MBR/GPT partition tables from scripts'},
  {package: 'hdparm', executables: ['hdparm'], why: 'ATA secure erase, drive identity'},
  {package: 'nvme-cli', executables: ['nvme'], why: 'NVMe format/sanitize, inventory'},
  {package: 'smartmontools', executables: ['smartctl'], why: 'SMART inventory'},
  {package: 'mdadm', executables: ['mdadm'], data: ['usr/lib/udev/rules.d/01-md-raid-creating.rules', 'usr/lib/udev/rules.d/63-md-raid-arrays.rules', 'usr/lib/udev/rules.d/64-md-raid-assembly.rules'], why: 'software RAID'},
  {package: 'ipmitool', executables: ['ipmitool'], why: 'BMC address inventory (in-band IPMI)'},
  {package: 'dmidecode', executables: ['dmidecode'], why: 'system/memory inventory'},
  {package: 'efibootmgr', executables: ['efibootmgr'], why: 'UEFI boot entries'},
  {package: 'e2fsprogs', executables: ['mke2fs', 'mkfs.ext4', 'e2fsck', 'fsck.ext4', 'resize2fs', 'tune2fs'], data: ['etc/mke2fs.conf'], why: 'ext4 filesystems (partition images, config drive)'},
  {package: 'dosfstools', executables: ['mkfs.fat', 'mkfs.vfat', 'fsck.fat', 'fsck.vfat'], why: 'ESP / vfat config drive'},
  {package: 'iproute2', executables: ['ip'], why: 'NIC inventory (ip -j addr), links up/down'},
  {
    package: 'udev',
    executables: ['udevadm', 'usr/lib/systemd/systemd-udevd', 'usr/lib/udev/ata_id', 'usr/lib/udev/scsi_id', 'usr/lib/udev/cdrom_id'],
    data: ['etc/udev/udev.conf', ...UDEV_RULES.map((r) => `usr/lib/udev/rules.d/${r}`)],
    why: 'device nodes, /dev/disk/by-*, module autoloading; udevadm settle/info',
  },
  {package: 'tcpdump', executables: ['tcpdump'], why: 'LLDP capture'},
  {package: 'coreutils', executables: ['shred', 'sync', 'dd'], why: 'shred --force --zero --verbose --iterations N; dd for GPT wiping'},
  {package: 'kmod', executables: ['kmod', 'modprobe', 'insmod', 'rmmod', 'lsmod', 'modinfo'], why: 'module loading (the agent runs modprobe)'},
  {package: 'busybox', executables: ['busybox'], why: 'init shell, udhcpc, small utilities (applet links)'},
]

/**
 * Dependencies never pulled in: they serve maintainer scripts (debconf, adduser, init-system-helpers,
 * dpkg, perl), SysV init scripts (lsb-base) or PAM logins, none of which exist in a tiny image.
 * If a kept executable really needed one of them, the ELF closure would fail and name it.
 */
// biome-ignore format: packed word list
export const PRUNED_DEPENDENCIES: readonly string[] = [
  'adduser', 'passwd', 'debconf', 'debconf-2.0', 'cdebconf', 'lsb-base', 'sysvinit-utils', 'init-system-helpers', 'usrmerge',
  'perl', 'perl-base', 'dpkg', 'install-info', 'debianutils', 'libpam-modules', 'libpam-modules-bin', 'libpam-runtime',
]

/**
 * busybox applets linked as usr/bin/NAME → busybox when the toolset has no real NAME (in usr/bin or
 * usr/sbin). `init` and `linuxrc` are left to whoever writes /init.
 */
export const BUSYBOX_APPLETS: readonly string[] = [
  '[',
  '[[',
  'ash',
  'awk',
  'base64',
  'basename',
  'blkdiscard',
  'cat',
  'chgrp',
  'chmod',
  'chown',
  'chroot',
  'clear',
  'cmp',
  'cp',
  'cpio',
  'cut',
  'date',
  'df',
  'diff',
  'dirname',
  'dmesg',
  'du',
  'echo',
  'egrep',
  'env',
  'expr',
  'false',
  'fgrep',
  'find',
  'free',
  'fstrim',
  'getty',
  'grep',
  'gunzip',
  'gzip',
  'halt',
  'head',
  'hexdump',
  'hostname',
  'hwclock',
  'id',
  'ifconfig',
  'kill',
  'killall',
  'klogd',
  'less',
  'ln',
  'logger',
  'login',
  'ls',
  'lsscsi',
  'md5sum',
  'mdev',
  'mkdir',
  'mkfifo',
  'mknod',
  'mktemp',
  'more',
  'mv',
  'nc',
  'netstat',
  'nproc',
  'nslookup',
  'pidof',
  'ping',
  'ping6',
  'pivot_root',
  'poweroff',
  'printf',
  'ps',
  'pwd',
  'readlink',
  'realpath',
  'reboot',
  'rm',
  'rmdir',
  'route',
  'sed',
  'seq',
  'setsid',
  'sh',
  'sha1sum',
  'sha256sum',
  'sha512sum',
  'sleep',
  'sort',
  'stat',
  'stty',
  'switch_root',
  'sysctl',
  'syslogd',
  'tail',
  'tar',
  'tee',
  'test',
  'timeout',
  'top',
  'touch',
  'tr',
  'traceroute',
  'true',
  'truncate',
  'tty',
  'udhcpc',
  'uname',
  'uniq',
  'unxz',
  'unzip',
  'uptime',
  'usleep',
  'vi',
  'watch',
  'wc',
  'wget',
  'which',
  'xargs',
  'xz',
  'xzcat',
  'yes',
  'zcat',
]

export class ToolsetError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ToolsetError'
  }
}

export interface ToolsetOptions extends AptOptions {
  cacheDir: string
  /** Default DEPLOY_TOOLSET. */
  tools?: readonly ToolPackage[]
  /** Default PRUNED_DEPENDENCIES. */
  prune?: readonly string[]
  /** Applets to link to busybox where nothing else provides them (default BUSYBOX_APPLETS; [] for none). */
  busyboxApplets?: readonly string[]
  /** Measure gzip -9 / zstd -19 sizes (default true; zstd -19 takes a while). */
  compress?: boolean
}

export interface PackageContribution {
  name: string
  version: string
  /** Files (not symlinks) this package contributes. */
  files: number
  sizes: SizeFigures
}

export interface ToolsetReport {
  packages: ResolvedPackage[]
  contributions: PackageContribution[]
  total: SizeFigures
  /** Every path written to the sink (files and symlinks), sorted. */
  paths: string[]
  busyboxLinks: string[]
  /** Executables as found (tool name → image path). */
  executables: Record<string, string>
  fetch: FetchStats
  /** The unpacked package set came from the cache (`<cacheDir>/staging/…`). */
  stagingHit: boolean
  /** Paths shipped by more than one package (the later package in resolution order wins). */
  overwritten: {path: string; packages: string[]}[]
  timings: {resolveMs: number; fetchMs: number; extractMs: number; closureMs: number; writeMs: number; measureMs: number}
}

async function walkOwned(stage: string, dir: string): Promise<string[]> {
  const out: string[] = []
  let entries
  try {
    entries = await readdir(join(stage, dir), {withFileTypes: true})
  } catch {
    return out
  }
  for (const e of entries) {
    const p = `${dir}/${e.name}`
    if (e.isDirectory()) out.push(...(await walkOwned(stage, p)))
    else out.push(p)
  }
  return out
}

/**
 * Resolve, fetch and unpack the toolset's packages into a private staging tree, keep the wanted
 * executables + their library closure + declared data files, and write those into `sink` (with the
 * usr-merge compat links). Reports each package's contribution.
 */
export async function buildToolset(sink: TreeSink, opts: ToolsetOptions): Promise<ToolsetReport> {
  const tools = opts.tools ?? DEPLOY_TOOLSET
  const t0 = Date.now()
  const packages = await resolvePackages([...new Set(tools.map((t) => t.package))], {...opts, exclude: opts.prune ?? PRUNED_DEPENDENCIES})
  const t1 = Date.now()
  const fetched = await fetchPackagesWithStats(packages, opts.cacheDir, opts)
  const t2 = Date.now()

  const staged = await stagePackagesCached(
    packages.map((p, i) => ({name: p.name, sha256: p.sha256, deb: fetched.paths[i]!})),
    opts.cacheDir,
  )
  const stageDir = staged.dir
  const owner = (p: string) => staged.owners.get(p)
  const t3 = Date.now()

  // executables
  const executables: Record<string, string> = {}
  const wanted: string[] = []
  for (const t of tools) {
    for (const exe of t.executables) {
      const candidates = exe.includes('/') ? [exe.replace(/^\/+/, '')] : [`usr/sbin/${exe}`, `usr/bin/${exe}`]
      const found = candidates.find((c) => owner(c) === t.package)
      if (!found) {
        const shipped = [...staged.owners].filter(([p, s]) => s === t.package && /^usr\/s?bin\//.test(p)).map(([p]) => `/${p}`)
        throw new ToolsetError(
          `package ${t.package} does not ship the executable '${exe}' (looked for ${candidates.map((c) => `/${c}`).join(', ')}; it ships ${shipped.slice(0, 30).join(' ') || 'no programs'})`,
        )
      }
      executables[exe] = found
      wanted.push(found)
    }
  }
  const closure = elfClosure(wanted, {root: stageDir, ownerOf: owner})

  // data files
  const data: ClosureFile[] = []
  for (const t of tools) {
    for (const d of t.data ?? []) {
      const path = d.replace(/^\/+/, '')
      const list = path.endsWith('/') ? (await walkOwned(stageDir, path.slice(0, -1))).filter((p) => owner(p) === t.package) : [path]
      if (!list.length || (!path.endsWith('/') && owner(path) !== t.package)) {
        throw new ToolsetError(`package ${t.package} does not ship /${path}`)
      }
      for (const p of list) {
        const st = await lstat(join(stageDir, p))
        data.push(
          st.isSymbolicLink() ? {path: p, type: 'symlink', target: await readlink(join(stageDir, p)), role: 'link'} : {path: p, type: 'file', role: 'library'},
        )
      }
    }
  }
  const t4 = Date.now()

  // write
  addUsrMergeLinks(sink)
  const all = new Map<string, ClosureFile>()
  for (const f of [...closure.files, ...data]) all.set(f.path, f)
  const dirs = new Set<string>()
  for (const p of all.keys()) {
    const parts = p.split('/')
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
  }
  for (const d of [...dirs].sort()) {
    if (all.has(d)) continue
    const st = await lstat(join(stageDir, d))
    if (st.isDirectory()) sink.addDir(d, 0o755)
  }
  const byPackage = new Map<string, Buffer[]>()
  const everything: Buffer[] = []
  for (const f of [...all.values()].sort((a, b) => a.path.localeCompare(b.path))) {
    const src = owner(f.path) ?? 'usrmerge'
    if (f.type === 'symlink') {
      sink.addSymlink(f.path, f.target!, {source: src})
      continue
    }
    const host = join(stageDir, f.path)
    const mode = (await lstat(host)).mode & 0o7777
    await sink.addFileFromHost(f.path, host, {mode, source: src})
    const buf = await readFile(host)
    everything.push(buf)
    const list = byPackage.get(src) ?? []
    list.push(buf)
    byPackage.set(src, list)
  }
  const busyboxLinks: string[] = []
  const bb = executables.busybox
  if (bb) {
    for (const a of opts.busyboxApplets ?? BUSYBOX_APPLETS) {
      if (a === 'init' || a === 'linuxrc' || all.has(`usr/bin/${a}`) || all.has(`usr/sbin/${a}`)) continue
      sink.addSymlink(`usr/bin/${a}`, bb === 'usr/bin/busybox' ? 'busybox' : `/${bb}`, {source: 'busybox'})
      busyboxLinks.push(`usr/bin/${a}`)
    }
  }
  const t5 = Date.now()

  const compress = opts.compress ?? true
  const contributions: PackageContribution[] = []
  for (const p of packages) {
    const bufs = byPackage.get(p.name)
    if (!bufs) continue
    contributions.push({name: p.name, version: p.version, files: bufs.length, sizes: await measureBuffers(bufs, {compress})})
  }
  contributions.sort((a, b) => b.sizes.raw - a.sizes.raw)
  const total = await measureBuffers(everything, {compress})
  const t6 = Date.now()
  return {
    packages,
    contributions,
    total,
    paths: [...new Set([...all.keys(), ...busyboxLinks, 'bin', 'sbin', 'lib', 'lib64'])].sort(),
    busyboxLinks,
    executables,
    fetch: fetched.stats,
    stagingHit: staged.hit,
    overwritten: staged.overwritten,
    timings: {resolveMs: t1 - t0, fetchMs: t2 - t1, extractMs: t3 - t2, closureMs: t4 - t3, writeMs: t5 - t4, measureMs: t6 - t5},
  }
}
