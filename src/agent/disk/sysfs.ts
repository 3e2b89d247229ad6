/**
 * Block device names and the kernel's facts about them in sysfs (/sys/class/block): kernel names,
 * the disk a partition belongs to, a disk's partitions, sizes and read-only flags.
 */
import {existsSync, realpathSync} from 'node:fs'
import {readFile, readdir} from 'node:fs/promises'
import path from 'node:path'
import type {Logger} from '../log.js'

export const SYS_CLASS_BLOCK = '/sys/class/block'

/** `/dev/x` or a symlink to it → kernel name `x` (unresolvable paths keep their basename). */
export function kernelName(device: string): string {
  let p = device
  try {
    p = realpathSync(device)
  } catch {
    // not present (yet): compare by name
  }
  return path.basename(p)
}

/** The whole disk a partition belongs to (from sysfs), or null for a whole disk. */
export function parentDiskOf(kname: string, sysClassBlock = SYS_CLASS_BLOCK): string | null {
  const dir = path.join(sysClassBlock, kname)
  if (!existsSync(path.join(dir, 'partition'))) return null
  try {
    return path.basename(path.dirname(realpathSync(dir)))
  } catch {
    return null
  }
}

/** Partitions of a whole disk, as /dev paths (from sysfs; empty for a partition). */
export async function partitionsOf(dev: string): Promise<string[]> {
  const kname = kernelName(dev)
  let entries: string[]
  try {
    entries = await readdir(path.join(SYS_CLASS_BLOCK, kname))
  } catch {
    return []
  }
  return entries
    .filter((e) => e.startsWith(kname) && existsSync(path.join(SYS_CLASS_BLOCK, kname, e, 'partition')))
    .sort()
    .map((e) => `/dev/${e}`)
}

/** Size in bytes from sysfs (`size` is always in 512-byte units). */
export async function deviceSize(dev: string): Promise<number> {
  const text = await readFile(path.join(SYS_CLASS_BLOCK, kernelName(dev), 'size'), 'utf8')
  return Number(text.trim()) * 512
}

/** The device's read-only flag (/sys/class/block/X/ro, which partitions have too). */
export async function isReadOnlyDevice(dev: string, log?: Logger): Promise<boolean> {
  const kname = kernelName(dev)
  for (const k of [kname, parentDiskOf(kname)]) {
    if (!k) continue
    try {
      return (await readFile(path.join(SYS_CLASS_BLOCK, k, 'ro'), 'utf8')).trim() === '1'
    } catch {
      // try the parent
    }
  }
  log?.warn('could not determine whether the device is read-only', {device: dev})
  return false
}

/** A sysfs-style file's trimmed content, or null when absent or empty. */
export async function readTrimmed(file: string): Promise<string | null> {
  try {
    const s = (await readFile(file, 'utf8')).trim()
    return s === '' ? null : s
  } catch {
    return null
  }
}
