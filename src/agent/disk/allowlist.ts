/**
 * The device allow-list (`ipa-device-allowlist` / `--device-allowlist`): when it is non-empty the
 * agent sees and touches only the listed devices and their partitions. Listing applies it through
 * isAllowed(); every destructive helper re-checks its target with assertDeviceAllowed(), so no
 * caller can bypass it.
 */
import {BlockDeviceEraseError} from '../errors.js'
import {kernelName, parentDiskOf} from './sysfs.js'

/** Kernel names of the allow-list entries (symlinks such as /dev/disk/by-path/... resolved). */
export function resolveAllowlist(allowlist: readonly string[]): Set<string> {
  return new Set(allowlist.map(kernelName))
}

/** Is a device (or a partition of `parent`) visible under the allow-list? Empty list: everything is. */
export function isAllowed(kname: string, parent: string | null, allowed: ReadonlySet<string>): boolean {
  if (allowed.size === 0) return true
  return allowed.has(kname) || (parent !== null && allowed.has(parent))
}

/** Throw unless `device` (a disk or partition) is visible under the allow-list. */
export function assertDeviceAllowed(device: string, allowlist: readonly string[]): void {
  if (allowlist.length === 0) return
  const allowed = resolveAllowlist(allowlist)
  const kname = kernelName(device)
  if (!isAllowed(kname, parentDiskOf(kname), allowed)) {
    throw new BlockDeviceEraseError(`Refusing to touch ${device}: it is not in the agent's device allow-list (${allowlist.join(', ')})`)
  }
}
