/**
 * log.collect_system_logs: a base64 tar.gz of the agent's logs and system state, as IPA returns it.
 * Every member — command output (ps, dmesg …), file copies (/proc/cmdline …), the agent's log and
 * what hardware managers add — goes through redact.ts: the agent token, `ipa-agent-token=…` and
 * other secret-looking parameters, and URL credentials are masked.
 */
import {readFile} from 'node:fs/promises'
import {createGzip} from 'node:zlib'
import tar from 'tar-stream'
import {run} from '../../common/exec.js'
import type {Extension} from '../commands.js'
import {recentLogLines} from '../log.js'
import {redactBuffer} from '../redact.js'
import type {AgentRuntime} from '../runtime.js'

/** Commands whose output goes into the bundle (file name → argv). Missing tools are noted, not fatal. */
const COMMANDS: Record<string, string[]> = {
  'dmesg.txt': ['dmesg'],
  'ip_addr.txt': ['ip', 'addr'],
  'ip_route.txt': ['ip', 'route'],
  'lsblk.txt': ['lsblk', '--all', '-o', '+UUID,PARTUUID,LABEL,FSTYPE'],
  'ps.txt': ['ps', '-ef'],
  'df.txt': ['df', '-a'],
  'mount.txt': ['mount'],
  'lshw.txt': ['lshw', '-quiet', '-json'],
  'lspci.txt': ['lspci', '-vv'],
}
/**
 * Files copied as they are. /run/rdk/init.log is the tiny image's /init progress (drivers, NICs,
 * disks, DHCP, clock); /var/log/rdk-agent.log holds the agent's output across restarts (the
 * in-memory agent.log only this run's).
 */
const FILES = [
  '/proc/cmdline',
  '/proc/mdstat',
  '/proc/meminfo',
  '/proc/cpuinfo',
  '/proc/partitions',
  '/proc/mounts',
  '/etc/resolv.conf',
  '/run/rdk/init.log',
  '/var/log/rdk-agent.log',
]

async function collect(rt: AgentRuntime): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {}
  out['agent.log'] = Buffer.from(`${recentLogLines().join('\n')}\n`)
  await Promise.all(
    Object.entries(COMMANDS).map(async ([name, [file, ...args]]) => {
      try {
        const r = await run(file!, args, {allowFailure: true, timeoutMs: 30_000})
        out[name] = Buffer.from(r.stdout + (r.stderr ? `\n--- stderr ---\n${r.stderr}` : ''))
      } catch (err) {
        out[name] = Buffer.from(`not collected: ${(err as Error).message}\n`)
      }
    }),
  )
  for (const path of FILES) {
    try {
      out[path.replace(/^\//, '').replace(/\//g, '_')] = await readFile(path)
    } catch {
      // absent on this system
    }
  }
  // Hardware managers may add their own files (IPA's collect_system_logs(io_dict, file_list)).
  const extra: Record<string, Buffer | string> = {}
  try {
    await rt.registry.dispatchToAllManagers('collect_system_logs', extra)
  } catch {
    // no manager implements it
  }
  for (const [name, data] of Object.entries(extra)) out[name] = Buffer.isBuffer(data) ? data : Buffer.from(String(data))
  for (const name of Object.keys(out)) out[name] = redactBuffer(out[name]!)
  return out
}

/** Pack files into a deterministic tar.gz (sorted names, fixed mtime). */
export async function tarGz(files: Record<string, Buffer>, mtime = new Date(0)): Promise<Buffer> {
  const pack = tar.pack()
  const gz = createGzip({level: 6})
  const chunks: Buffer[] = []
  const done = new Promise<void>((resolve, reject) => {
    gz.on('data', (c: Buffer) => chunks.push(c))
    gz.on('end', resolve)
    gz.on('error', reject)
  })
  pack.pipe(gz)
  for (const name of Object.keys(files).sort()) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({name, size: files[name]!.length, mtime, mode: 0o644, uid: 0, gid: 0}, files[name]!, (err) => (err ? reject(err) : resolve()))
    })
  }
  pack.finalize()
  await done
  return Buffer.concat(chunks)
}

export const logExtension: Extension<AgentRuntime> = {
  name: 'log',
  commands: {
    collect_system_logs: {
      async: false,
      params: {},
      async run(_p, rt) {
        const files = await collect(rt)
        return {system_logs: (await tarGz(files, new Date())).toString('base64')}
      },
    },
  },
}
