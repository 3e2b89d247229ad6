/**
 * rdk's safety guard (always on): a device is never written if a filesystem on it, on one of its
 * partitions or on anything stacked on them (md, dm, LVM) is mounted, or if any of those is active
 * swap. Special filesystems (shared/clustered: GPFS, VMFS, GFS2, Ceph) are guarded as IPA does when
 * `guard_special_filesystems` is on.
 */
import {existsSync} from 'node:fs'
import {readFile, readdir, realpath} from 'node:fs/promises'
import path from 'node:path'
import {ProtectedDeviceError} from '../errors.js'
import {probeDevice} from './probe.js'
import {kernelName, parentDiskOf, partitionsOf, SYS_CLASS_BLOCK} from './sysfs.js'

export interface MountEntry {
  majmin: string
  mountpoint: string
  fstype: string
  source: string
}

/** Octal escapes (\040 for a space) used in /proc/self/mountinfo and /proc/swaps. */
function unescapeProc(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** Parse /proc/self/mountinfo. */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    const [left, right] = line.split(' - ')
    if (!left || right === undefined) continue
    const f = left.split(' ')
    const r = right.split(' ')
    if (f.length < 5) continue
    out.push({majmin: f[2]!, mountpoint: unescapeProc(f[4]!), fstype: r[0] ?? '', source: unescapeProc(r[1] ?? '')})
  }
  return out
}

/** Parse /proc/swaps: the swap areas' file names (devices or files). */
export function parseSwaps(text: string): string[] {
  return text
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((f): f is string => Boolean(f))
    .map(unescapeProc)
}

/** Why each kernel block device is in use: itself, or through something stacked on it, is mounted or swap. */
export async function devicesInUse(): Promise<Map<string, string>> {
  const byMajmin = new Map<string, string>()
  const names = await readdir(SYS_CLASS_BLOCK).catch(() => [] as string[])
  await Promise.all(
    names.map(async (n) => {
      const mm = (await readFile(path.join(SYS_CLASS_BLOCK, n, 'dev'), 'utf8').catch(() => '')).trim()
      if (mm) byMajmin.set(mm, n)
    }),
  )
  const direct = new Map<string, string>()
  const mark = (kname: string | undefined, why: string): void => {
    if (kname && !direct.has(kname)) direct.set(kname, why)
  }
  const devOf = async (p: string): Promise<string | undefined> => {
    if (!p.startsWith('/dev/')) return undefined
    try {
      const k = path.basename(await realpath(p))
      return existsSync(path.join(SYS_CLASS_BLOCK, k)) ? k : undefined
    } catch {
      return undefined
    }
  }
  for (const m of parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8'))) {
    const byNumber = m.majmin.startsWith('0:') ? undefined : byMajmin.get(m.majmin)
    mark(byNumber ?? (await devOf(m.source)), 'mounted filesystem')
  }
  const swaps = await readFile('/proc/swaps', 'utf8').catch(() => '')
  for (const f of parseSwaps(swaps)) mark(await devOf(f), 'active swap')

  // Close over the stack: whatever lies beneath a used device (slaves) and the disk holding a used partition.
  const out = new Map<string, string>()
  const queue = [...direct.entries()]
  while (queue.length) {
    const [k, why] = queue.shift()!
    if (out.has(k)) continue
    out.set(k, why)
    const slaves = await readdir(path.join(SYS_CLASS_BLOCK, k, 'slaves')).catch(() => [] as string[])
    for (const s of slaves) queue.push([s, why])
    const parent = parentDiskOf(k)
    if (parent) queue.push([parent, why])
  }
  return out
}

/** Throw ProtectedDeviceError if `dev` (or its partitions, or what is stacked on them) is mounted or swap. */
export async function assertNotInUse(dev: string, inUse?: Map<string, string>): Promise<void> {
  const used = inUse ?? (await devicesInUse())
  const why = used.get(kernelName(dev))
  if (why) throw new ProtectedDeviceError(dev, why)
}

/** Partition type GUIDs/ids IPA refuses to wipe (shared, clustered filesystems). */
export const GUARDED_PARTITION_IDS: Readonly<Record<string, string>> = {
  '37affc90-ef7d-4e96-91c3-2d7ae055b174': 'IBM GPFS Partition',
  'aa31e02a-400f-11db-9590-000c2911d1b8': 'VMware VMFS Partition (GPT)',
  '0xfb': 'VMware VMFS Partition (MBR)',
}
/** blkid filesystem types refused likewise (IPA guards gfs2; rdk adds VMFS and Ceph signatures). */
export const GUARDED_FS_TYPES: Readonly<Record<string, string>> = {
  gfs2: 'Red Hat Global File System 2',
  vmfs_volume_member: 'VMware VMFS volume',
  vmfs: 'VMware VMFS volume',
  ceph_bluestore: 'Ceph BlueStore volume',
}

/** What special filesystem, if any, a set of blkid probes shows (pure). */
export function findSpecialFilesystem(probes: readonly Record<string, string>[]): string | null {
  for (const p of probes) {
    for (const key of ['PART_ENTRY_TYPE', 'PTUUID', 'UUID', 'PART_ENTRY_UUID']) {
      const v = p[key]?.toLowerCase()
      if (v && GUARDED_PARTITION_IDS[v]) return GUARDED_PARTITION_IDS[v]
    }
    const t = p.TYPE?.toLowerCase()
    if (t && GUARDED_FS_TYPES[t]) return GUARDED_FS_TYPES[t]
  }
  return null
}

/** Throw ProtectedDeviceError if `dev` or one of its partitions holds a guarded special filesystem. */
export async function assertNoSpecialFilesystems(dev: string): Promise<void> {
  const probes = await Promise.all([dev, ...(await partitionsOf(dev))].map((d) => probeDevice(d)))
  const what = findSpecialFilesystem(probes)
  if (what) throw new ProtectedDeviceError(dev, what)
}
