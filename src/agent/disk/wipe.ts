/**
 * Wiping disk metadata (ironic-lib's disk_utils.destroy_disk_metadata) and filesystem signatures.
 * destroyDiskMetadata() re-checks its target against the allow-list; wipeSignatures() is for arrays
 * and holders the RAID steps found through the allow-listed listing (an md array has no sysfs parent
 * the allow-list could name).
 */
import {CommandFailedError, run} from '../../common/exec.js'
import type {Logger} from '../log.js'
import {assertDeviceAllowed} from './allowlist.js'
import {rereadPartitionTable, udevSettle} from './settle.js'
import {deviceSize, kernelName, parentDiskOf} from './sysfs.js'

/** Primary or backup GPT: protective MBR/header + 128 entries of 128 bytes = 33 sectors of 512 bytes. */
export const GPT_SIZE_SECTORS = 33

/**
 * Wipe signatures and partition tables: `wipefs --force --all`, zero the first and last 33 sectors
 * with direct I/O (primary and backup GPT, even when sgdisk cannot parse a damaged table), then
 * `sgdisk -Z`, and tell the kernel.
 */
export async function destroyDiskMetadata(dev: string, allowlist: readonly string[], log?: Logger): Promise<void> {
  assertDeviceAllowed(dev, allowlist)
  log?.debug('destroying disk metadata', {device: dev})
  try {
    await run('wipefs', ['--force', '--all', dev])
  } catch (err) {
    if (!(err instanceof CommandFailedError) || !err.stderr.includes('--force')) throw err
    await run('wipefs', ['--all', dev])
  }
  const size = await deviceSize(dev)
  const sectors = Math.floor(size / 512)
  await run('dd', ['bs=512', 'if=/dev/zero', `of=${dev}`, `count=${Math.min(GPT_SIZE_SECTORS, sectors)}`, 'oflag=direct'])
  if (sectors > GPT_SIZE_SECTORS) {
    await run('dd', ['bs=512', 'if=/dev/zero', `of=${dev}`, `count=${GPT_SIZE_SECTORS}`, `seek=${sectors - GPT_SIZE_SECTORS}`, 'oflag=direct'])
  }
  await run('sgdisk', ['-Z', dev])
  // Drop the kernel's view of the (now gone) partitions of a whole disk.
  if (!parentDiskOf(kernelName(dev))) await rereadPartitionTable(dev)
  await udevSettle(log)
  log?.info('disk metadata destroyed', {device: dev})
}

/**
 * Best-effort `wipefs -a` (`-af` with `force`) of one device, as the RAID steps use it: the
 * result's stderr when wipefs failed, null when it succeeded.
 */
export async function wipeSignatures(dev: string, opts: {force?: boolean} = {}): Promise<string | null> {
  const r = await run('wipefs', [opts.force ? '-af' : '-a', dev], {allowFailure: true, timeoutMs: 60_000})
  return r.exitCode === 0 ? null : r.stderr.trim()
}
