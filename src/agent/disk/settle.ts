/**
 * Telling the kernel about changed partition tables and waiting for udev: the one rescan
 * (IPA's trigger_device_rescan), the one udev settle, the one partition-table re-read and the one
 * "wait until the device node exists" loop. All best effort except the wait, which fails clearly.
 */
import {stat} from 'node:fs/promises'
import {run} from '../../common/exec.js'
import {CommandExecutionError} from '../errors.js'
import type {Logger} from '../log.js'

/** `udevadm settle` (IPA does so before listing and after partitioning); harmless where udevd is not running. */
export async function udevSettle(log?: Logger, timeoutSeconds = 30): Promise<void> {
  try {
    await run('udevadm', ['settle', `--timeout=${timeoutSeconds}`], {timeoutMs: (timeoutSeconds + 5) * 1000})
  } catch (err) {
    log?.debug('udevadm settle failed', {err})
  }
}

/**
 * IPA's trigger_device_rescan: sync, settle, partprobe, settle (all best effort; a failing partprobe
 * is logged, since it usually means a broken partition table).
 */
export async function rescanDevice(device: string, log?: Logger): Promise<void> {
  await run('sync', [], {allowFailure: true}).catch(() => undefined)
  await udevSettle(log)
  const p = await run('partprobe', [device], {allowFailure: true, timeoutMs: 60_000}).catch((e: unknown) => ({exitCode: -1, stderr: String(e)}))
  if (p.exitCode !== 0) log?.warn('partprobe failed; the partition table may be broken', {device, stderr: p.stderr.trim()})
  await udevSettle(log)
}

/** `blockdev --rereadpt`: drop the kernel's view of a disk's partitions (fails harmlessly when they are busy). */
export async function rereadPartitionTable(device: string): Promise<void> {
  await run('blockdev', ['--rereadpt', device], {allowFailure: true, timeoutMs: 30_000}).catch(() => undefined)
}

/** Wait (settling udev between looks, backing off) until `dev` exists as a block device. */
export async function waitForBlockDevice(dev: string, attempts = 10): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    try {
      if ((await stat(dev)).isBlockDevice()) return
    } catch {
      // not there yet
    }
    await udevSettle(undefined, 10)
    await new Promise((r) => setTimeout(r, 300 * (i + 1)))
  }
  throw new CommandExecutionError(`Unable to stat device ${dev} after attempting to verify ${attempts} times.`)
}
