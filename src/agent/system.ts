/**
 * Actions on the machine itself (power off, reboot, NICs down, sync).
 *
 * Safety: these only act for real when the agent runs from a ramdisk (root filesystem is
 * rootfs/tmpfs/ramfs) or when `ipa-system-actions=real` says so. Anywhere else — a developer's
 * machine, CI — they are logged and simulated, so a test (or a confused Ironic) can never power
 * off or isolate the host.
 */
import {readFile} from 'node:fs/promises'
import {run} from '../common/exec.js'
import type {Logger} from './log.js'

export type SystemMode = 'real' | 'simulate'

export interface SystemActions {
  readonly mode: SystemMode
  sync(): Promise<void>
  powerOff(): Promise<void>
  reboot(): Promise<void>
  /** Bring every network interface except lo down. */
  networkDown(): Promise<void>
}

/** Is `/` a RAM-backed filesystem (we were booted as a ramdisk)? */
export async function runningFromRamdisk(): Promise<boolean> {
  try {
    const mounts = await readFile('/proc/self/mounts', 'utf8')
    for (const line of mounts.split('\n')) {
      const [, mountpoint, fstype] = line.split(' ')
      if (mountpoint === '/') return ['rootfs', 'tmpfs', 'ramfs'].includes(fstype ?? '')
    }
  } catch {
    // no /proc: not a Linux ramdisk
  }
  return false
}

export async function systemActions(setting: string, log: Logger): Promise<SystemActions> {
  const mode: SystemMode = setting === 'real' ? 'real' : setting === 'simulate' ? 'simulate' : (await runningFromRamdisk()) ? 'real' : 'simulate'
  if (mode === 'simulate') log.warn('not running from a ramdisk: power, reboot and network actions are simulated')
  const sysrq = async (key: string) => {
    const {writeFile} = await import('node:fs/promises')
    await writeFile('/proc/sys/kernel/sysrq', '1').catch(() => undefined)
    await writeFile('/proc/sysrq-trigger', key)
  }
  return {
    mode,
    async sync() {
      await run('sync', [])
    },
    async powerOff() {
      if (mode === 'simulate') return log.warn('simulated power off')
      await run('sync', []).catch(() => undefined)
      try {
        await run('poweroff', ['-f'])
      } catch (err) {
        log.warn('poweroff failed, using sysrq', {err})
        await sysrq('o')
      }
    },
    async reboot() {
      if (mode === 'simulate') return log.warn('simulated reboot')
      await run('sync', []).catch(() => undefined)
      try {
        await run('reboot', ['-f'])
      } catch (err) {
        log.warn('reboot failed, using sysrq', {err})
        await sysrq('b')
      }
    },
    async networkDown() {
      if (mode === 'simulate') return log.warn('simulated network lockdown')
      const {readdir} = await import('node:fs/promises')
      for (const iface of await readdir('/sys/class/net')) {
        if (iface === 'lo') continue
        await run('ip', ['link', 'set', iface, 'down'], {allowFailure: true})
      }
    },
  }
}
