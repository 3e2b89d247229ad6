/**
 * Burn-in steps with IPA's semantics (ironic_python_agent/burnin.py): stress-ng for CPU and memory,
 * fio for disks and the network, gpu-burn for GPUs. Every setting comes from the node's
 * `driver_info.agent_burnin_*` keys with IPA's names and defaults (docs/burnin.md).
 *
 * Where rdk is stricter than IPA:
 * - every setting is validated before anything runs (a count is a non-negative integer, a timeout a
 *   positive duration, an output file an absolute path...), with an error naming the key;
 * - a timeout of 0 (stress-ng: run forever) is refused;
 * - burnin_disk only sees the devices the agent may touch (device allow-list, skip_block_devices),
 *   skips virtual media, read-only and md devices, and refuses the whole step before fio starts if
 *   any target (or what is stacked on it) is mounted or active swap — fio writes the raw device;
 * - every program runs under a process timeout derived from its own runtime (a hung fio or stress-ng
 *   fails the step instead of blocking the agent forever), and the network reader's wait for its
 *   partner is bounded by agent_burnin_fio_network_pairing_timeout;
 * - dynamic network pairing through a tooz coordination backend is not supported: it needs a
 *   coordinator client (ZooKeeper, etcd, ...) rdk does not ship; a clear error says to use the static
 *   agent_burnin_fio_network_config {role, partner}.
 *
 * Results: IPA logs the tools' output and returns nothing; rdk logs the same (bounded tail) and
 * returns a small summary (command line, duration, parsed metrics) as the step's result, which Ironic
 * ignores and the agent's command status shows.
 */
import {readFile} from 'node:fs/promises'
import path from 'node:path'
import {CommandFailedError, run, ToolMissingError, type RunResult} from '../../common/exec.js'
import {CleaningError, CommandExecutionError, InvalidCommandParamsError} from '../errors.js'
import type {Logger} from '../log.js'
import {assertDeviceAllowed} from '../disk/allowlist.js'
import {assertNoSpecialFilesystems, assertNotInUse, devicesInUse} from '../disk/guard.js'
import {isVirtualMediaDevice} from '../disk/probe.js'
import {isReadOnlyDevice, kernelName} from '../disk/sysfs.js'
import type {BlockDevice, NodeInfo} from './types.js'

/** IPA's defaults. */
export const STRESS_NG_DEFAULT_TIMEOUT = 86400
export const FIO_DISK_DEFAULT_LOOPS = 4
export const FIO_NETWORK_DEFAULT_RUNTIME = 21600
export const FIO_NETWORK_PORT = 9000
export const FIO_NETWORK_NUMJOBS = 16
export const NETWORK_PAIRING_DEFAULT_TIMEOUT = 900
export const NETWORK_BURNIN_ROLES = ['writer', 'reader'] as const
export const GPU_BURN_DEFAULT_DIR = '/opt/gpu-burn'
/** How long the network reader waits before each attempt to reach its partner (IPA: 30 s between attempts, none before the first). */
export const NETWORK_READER_RETRY_SECONDS = 5
/** How much of a tool's output goes into the log and the result. */
export const OUTPUT_TAIL_CHARS = 16 * 1024

type Info = Record<string, unknown>

export interface BurninContext {
  log: Logger
}

export interface BurninResult {
  command: string[]
  seconds: number
  /** Per-stressor metrics (stress-ng) or per-job figures (fio). */
  metrics: unknown
  /** The last OUTPUT_TAIL_CHARS of the tool's report. */
  output_tail: string
}

// ------------------------------------------------------------------------------------------------
// Settings (pure)

function bad(key: string, value: unknown, what: string): never {
  throw new InvalidCommandParamsError(`driver_info.${key} must be ${what}; got ${JSON.stringify(value)}`)
}

function infoOf(node: NodeInfo | undefined): Info {
  const i = node?.driver_info
  return i && typeof i === 'object' && !Array.isArray(i) ? (i as Info) : {}
}

/** A non-negative integer (numbers or digit strings, as Ironic's driver_info may hold either). */
export function intSetting(info: Info, key: string, dflt: number, min = 0): number {
  const v = info[key]
  if (v === undefined || v === null) return dflt
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : NaN
  if (!Number.isInteger(n) || n < min) bad(key, v, min > 0 ? `an integer of at least ${min}` : 'a non-negative integer')
  return n
}

const UNIT_SECONDS: Record<string, number> = {'': 1, s: 1, m: 60, h: 3600, d: 86400}

/**
 * A duration as stress-ng and fio accept it: seconds, or digits with s/m/h/d. Returns the text to pass
 * and the seconds it means.
 */
export function durationSetting(info: Info, key: string, dflt: number, opts: {allowZero?: boolean} = {}): {text: string; seconds: number} {
  const v = info[key]
  if (v === undefined || v === null) return {text: String(dflt), seconds: dflt}
  const m =
    typeof v === 'number'
      ? Number.isInteger(v) && v >= 0
        ? [String(v), String(v), '']
        : null
      : typeof v === 'string'
        ? /^\s*(\d+)\s*([smhd]?)\s*$/i.exec(v)
        : null
  if (!m) bad(key, v, 'a duration in seconds (an integer, or digits followed by s, m, h or d)')
  const seconds = Number(m[1]) * UNIT_SECONDS[m[2]!.toLowerCase()]!
  if (seconds === 0 && !opts.allowZero) bad(key, v, 'a positive duration (0 would run until aborted)')
  return {text: `${m[1]}${m[2]!.toLowerCase()}`, seconds}
}

/** An optional output file: an absolute path (the agent's working directory is no place for it). */
export function outputFileSetting(info: Info, key: string): string | undefined {
  const v = info[key]
  if (v === undefined || v === null || v === '') return undefined
  if (typeof v !== 'string' || !path.isAbsolute(v) || v.includes('\0') || v.endsWith('/')) bad(key, v, 'an absolute file path')
  return path.normalize(v)
}

function boolSetting(info: Info, key: string, dflt: boolean): boolean {
  const v = info[key]
  if (v === undefined || v === null) return dflt
  if (typeof v === 'boolean') return v
  const s = String(v).trim().toLowerCase()
  if (['1', 'true', 'yes', 'on', 'y', 't'].includes(s)) return true
  if (['0', 'false', 'no', 'off', 'n', 'f'].includes(s)) return false
  return bad(key, v, 'a boolean')
}

export type Stressor = 'cpu' | 'vm'

export interface StressNgPlan {
  args: string[]
  timeoutSeconds: number
  outputfile?: string
}

/** stress-ng's command line for burnin_cpu ('cpu') or burnin_memory ('vm'), from driver_info (IPA's keys). */
export function stressNgPlan(node: NodeInfo | undefined, stressor: Stressor): StressNgPlan {
  const info = infoOf(node)
  if (stressor !== 'cpu' && stressor !== 'vm') throw new InvalidCommandParamsError(`Unknown stressor type: ${String(stressor)}`)
  // IPA's key names: agent_burnin_cpu_cpu, agent_burnin_vm_vm, agent_burnin_vm_vm-bytes.
  const count = intSetting(info, `agent_burnin_${stressor}_${stressor}`, 0)
  const timeout = durationSetting(info, `agent_burnin_${stressor}_timeout`, STRESS_NG_DEFAULT_TIMEOUT)
  const outputfile = outputFileSetting(info, `agent_burnin_${stressor}_outputfile`)
  const args = [`--${stressor}`, String(count), '--timeout', timeout.text]
  if (stressor === 'vm') {
    const key = 'agent_burnin_vm_vm-bytes'
    const v = info[key] ?? '98%'
    const s = typeof v === 'number' && Number.isInteger(v) && v > 0 ? String(v) : typeof v === 'string' ? v.trim() : ''
    if (!/^(?:\d+(?:\.\d+)?%|\d+[bkmgt]?)$/i.test(s) || /^0+(?:\.0+)?[%bkmgt]?$/i.test(s))
      bad(key, v, 'a size (bytes, or digits with b/k/m/g/t) or a percentage of the memory such as "98%"')
    args.push('--vm-bytes', s)
  }
  args.push('--metrics-brief')
  if (outputfile) args.push('--log-file', outputfile)
  return {args, timeoutSeconds: timeout.seconds, outputfile}
}

/** The metrics table of `stress-ng --metrics-brief` (pure): stressor → figures. */
export function parseStressNgMetrics(
  text: string,
): Record<string, {bogo_ops: number; real_time: number; usr_time: number; sys_time: number; bogo_ops_per_s_real: number; bogo_ops_per_s_cpu: number}> {
  const out: ReturnType<typeof parseStressNgMetrics> = {}
  for (const line of text.split('\n')) {
    const m = /^stress-ng: (?:metrc|info):\s+\[\d+\]\s+([a-z][\w-]*)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$/.exec(line)
    if (!m || m[1] === 'stressor') continue
    out[m[1]!] = {
      bogo_ops: Number(m[2]),
      real_time: Number(m[3]),
      usr_time: Number(m[4]),
      sys_time: Number(m[5]),
      bogo_ops_per_s_real: Number(m[6]),
      bogo_ops_per_s_cpu: Number(m[7]),
    }
  }
  return out
}

export interface FioDiskPlan {
  /** Options before the jobs, then one `--name X --filename X` job per device. */
  args: string[]
  /** Seconds the run is bounded to (undefined: loops over whole devices, no time bound). */
  timeoutSeconds?: number
  outputfile?: string
  smartTest: boolean
}

/** fio's command line for burnin_disk over `devices` (pure; IPA's options and keys). */
export function fioDiskPlan(node: NodeInfo | undefined, devices: readonly string[]): FioDiskPlan {
  const info = infoOf(node)
  // 4 iterations, badblocks' default (IPA).
  const loops = intSetting(info, 'agent_burnin_fio_disk_loops', FIO_DISK_DEFAULT_LOOPS, 1)
  const runtime = durationSetting(info, 'agent_burnin_fio_disk_runtime', 0, {allowZero: true})
  const outputfile = outputFileSetting(info, 'agent_burnin_fio_disk_outputfile')
  const smartTest = boolSetting(info, 'agent_burnin_fio_disk_smart_test', false)
  const args = [
    '--rw',
    'readwrite',
    '--bs',
    '4k',
    '--direct',
    '1',
    '--ioengine',
    'libaio',
    '--iodepth',
    '32',
    '--verify',
    'crc32c',
    '--verify_dump',
    '1',
    '--continue_on_error',
    'verify',
    '--loops',
    String(loops),
    '--runtime',
    runtime.text,
    // rdk: no verify-state file in the working directory when the time-based run ends (IPA leaves one).
    '--verify_state_save',
    '0',
  ]
  // IPA always passes --time_based; with runtime 0 fio ignores it (with a warning): leave it out then.
  if (runtime.seconds > 0) args.push('--time_based')
  args.push('--output-format', 'json')
  if (outputfile) args.push('--output', outputfile)
  for (const d of devices) args.push('--name', d, '--filename', d)
  return {args, timeoutSeconds: runtime.seconds > 0 ? runtime.seconds + Math.max(300, Math.ceil(runtime.seconds / 10)) : undefined, outputfile, smartTest}
}

export interface FioJobSummary {
  name: string
  error: number
  read_bytes: number
  write_bytes: number
  read_iops: number
  write_iops: number
  read_bw_kib: number
  write_bw_kib: number
  total_errors: number
}

/** Per-job figures from fio's JSON report (pure). Text before the JSON (warnings) is skipped. */
export function parseFioJson(text: string): FioJobSummary[] {
  const start = text.indexOf('{')
  if (start < 0) throw new CommandExecutionError(`fio printed no JSON report: ${JSON.stringify(text.slice(-500))}`)
  // biome-ignore lint/suspicious/noExplicitAny: fio's JSON report, read field by field below
  let doc: {jobs?: Record<string, any>[]}
  try {
    doc = JSON.parse(text.slice(start))
  } catch (err) {
    throw new CommandExecutionError(`fio's JSON report does not parse (${(err as Error).message}): ${JSON.stringify(text.slice(start, start + 300))}`)
  }
  const n = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0)
  return (doc.jobs ?? []).map((j) => ({
    name: String(j.jobname ?? ''),
    error: n(j.error),
    read_bytes: n(j.read?.io_bytes),
    write_bytes: n(j.write?.io_bytes),
    read_iops: n(j.read?.iops),
    write_iops: n(j.write?.iops),
    read_bw_kib: n(j.read?.bw),
    write_bw_kib: n(j.write?.bw),
    total_errors: n(j.total_err),
  }))
}

export interface NetworkPlan {
  role: 'writer' | 'reader'
  partner: string
  runtime: {text: string; seconds: number}
  outputfile?: string
  pairingTimeoutSeconds: number
}

/** A host name or an IP address for fio's --hostname (no options, no spaces). */
const PARTNER_RE =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*)$/

/** Role and partner for burnin_network (pure): the static agent_burnin_fio_network_config only. */
export function networkPlan(node: NodeInfo | undefined): NetworkPlan {
  const info = infoOf(node)
  const runtime = durationSetting(info, 'agent_burnin_fio_network_runtime', FIO_NETWORK_DEFAULT_RUNTIME)
  const outputfile = outputFileSetting(info, 'agent_burnin_fio_network_outputfile')
  const pairingTimeoutSeconds = durationSetting(info, 'agent_burnin_fio_network_pairing_timeout', NETWORK_PAIRING_DEFAULT_TIMEOUT).seconds
  let config = info.agent_burnin_fio_network_config
  if (typeof config === 'string' && config.trim().startsWith('{')) {
    try {
      config = JSON.parse(config)
    } catch {
      bad('agent_burnin_fio_network_config', config, 'an object {role, partner}')
    }
  }
  if (config === undefined || config === null || config === '') {
    if (info.agent_burnin_fio_network_pairing_backend_url) {
      throw new CleaningError(
        'fio (network): dynamic pairing through a tooz coordination backend (agent_burnin_fio_network_pairing_backend_url) is not supported by rdk; ' +
          'set driver_info.agent_burnin_fio_network_config to {"role": "writer" or "reader", "partner": "<the other node\'s address>"} on both nodes instead',
      )
    }
    throw new CleaningError(
      'fio (network): no pairing configured: set driver_info.agent_burnin_fio_network_config to {"role": "writer" or "reader", "partner": "<the other node\'s address>"} ' +
        '(dynamic pairing through agent_burnin_fio_network_pairing_backend_url is not supported by rdk)',
    )
  }
  if (typeof config !== 'object' || Array.isArray(config)) bad('agent_burnin_fio_network_config', config, 'an object {role, partner}')
  const {role, partner} = config as {role?: unknown; partner?: unknown}
  if (typeof role !== 'string' || !(NETWORK_BURNIN_ROLES as readonly string[]).includes(role)) {
    throw new CleaningError(
      `fio (network) found an unknown role: ${JSON.stringify(role ?? null)} (agent_burnin_fio_network_config.role must be "writer" or "reader")`,
    )
  }
  if (partner === undefined || partner === null || partner === '') {
    const hint = 'partner_name' in (config as object) ? ' (the key is "partner", as in IPA, not "partner_name")' : ''
    throw new CleaningError(`fio (network) failed to find partner: agent_burnin_fio_network_config.partner is not set${hint}`)
  }
  if (typeof partner !== 'string' || !PARTNER_RE.test(partner)) bad('agent_burnin_fio_network_config.partner', partner, 'a host name or an IP address')
  return {role: role as NetworkPlan['role'], partner, runtime, outputfile, pairingTimeoutSeconds}
}

/** fio's command line for one direction of burnin_network (pure; IPA's options). */
export function fioNetworkArgs(writer: boolean, runtime: string, partner: string, outputfile?: string): string[] {
  const args = [
    '--ioengine',
    'net',
    '--port',
    String(FIO_NETWORK_PORT),
    '--fill_device',
    '1',
    '--group_reporting',
    '--gtod_reduce',
    '1',
    '--numjobs',
    String(FIO_NETWORK_NUMJOBS),
  ]
  if (writer) args.push('--name', 'writer', '--rw', 'write', '--runtime', runtime, '--time_based', '--listen')
  else args.push('--name', 'reader', '--rw', 'read', '--hostname', partner)
  args.push('--output-format', 'json')
  if (outputfile) args.push('--output', outputfile)
  return args
}

// ------------------------------------------------------------------------------------------------
// Running

const tail = (s: string) => (s.length > OUTPUT_TAIL_CHARS ? s.slice(-OUTPUT_TAIL_CHARS) : s)

async function runTool(
  ctx: BurninContext,
  what: string,
  file: string,
  args: string[],
  timeoutSeconds: number | undefined,
  opts: {cwd?: string} = {},
): Promise<RunResult> {
  ctx.log.info(`burn-in ${what} command`, {command: [file, ...args]})
  try {
    return await run(file, args, {timeoutMs: timeoutSeconds === undefined ? undefined : timeoutSeconds * 1000, cwd: opts.cwd})
  } catch (err) {
    if (err instanceof ToolMissingError) {
      const hint = file === 'stress-ng' || file === 'fio' ? " (build the ramdisk with the 'burnin' element: rdk build --element burnin)" : ''
      throw new CommandExecutionError(`${what} failed: ${err.message}${hint}`)
    }
    const msg = `${what} failed with error ${(err as Error).message}`
    ctx.log.error(msg, err instanceof CommandFailedError ? {stdout: tail(err.stdout), stderr: tail(err.stderr)} : {})
    throw new CommandExecutionError(msg)
  }
}

/** stress-ng's process bound: its own timeout plus time to stop its workers and report. */
function stressBound(seconds: number): number {
  return seconds + Math.max(120, Math.ceil(seconds / 10))
}

async function stressNg(ctx: BurninContext, node: NodeInfo | undefined, stressor: Stressor): Promise<BurninResult> {
  const plan = stressNgPlan(node, stressor)
  const t0 = Date.now()
  const r = await runTool(ctx, `stress-ng (${stressor})`, 'stress-ng', plan.args, stressBound(plan.timeoutSeconds))
  // stress-ng reports on stderr (IPA logs it); with --log-file the same lines also go there.
  const report = [r.stdout, r.stderr].filter((s) => s.trim()).join('\n')
  const metrics = parseStressNgMetrics(report)
  const seconds = (Date.now() - t0) / 1000
  ctx.log.info(`burn-in stress-ng (${stressor}) finished`, {seconds, metrics, output: tail(report)})
  return {command: ['stress-ng', ...plan.args], seconds, metrics, output_tail: tail(report)}
}

/** burnin_cpu: stress-ng --cpu N (0: one worker per CPU) for agent_burnin_cpu_timeout seconds (default 24 h). */
export function burninCpu(ctx: BurninContext, node: NodeInfo | undefined): Promise<BurninResult> {
  return stressNg(ctx, node, 'cpu')
}

/** burnin_memory: stress-ng --vm N --vm-bytes B (default 98 % of the memory) for agent_burnin_vm_timeout seconds. */
export function burninMemory(ctx: BurninContext, node: NodeInfo | undefined): Promise<BurninResult> {
  return stressNg(ctx, node, 'vm')
}

export interface DiskBurninContext extends BurninContext {
  allowlist: readonly string[]
  /** Refuse devices holding shared/clustered filesystems (the agent's guard_special_filesystems). */
  guardSpecial: boolean
}

/**
 * The devices burnin_disk writes: the given list (the manager's block devices, allow-list and skip
 * list applied) without md arrays, virtual media and read-only devices. Throws ProtectedDeviceError
 * before anything runs if any of them is in use.
 */
export async function diskBurninTargets(ctx: DiskBurninContext, devices: readonly BlockDevice[]): Promise<string[]> {
  const out: string[] = []
  for (const d of devices) {
    const dev = d.name
    if (/^md/.test(kernelName(dev))) {
      ctx.log.info('burnin_disk skips the software RAID device (its member disks are tested)', {device: dev})
      continue
    }
    if (await isVirtualMediaDevice(dev)) {
      ctx.log.info('burnin_disk skips the virtual media device', {device: dev})
      continue
    }
    if (await isReadOnlyDevice(dev, ctx.log)) {
      ctx.log.info('burnin_disk skips the read-only device', {device: dev})
      continue
    }
    out.push(dev)
  }
  const inUse = await devicesInUse()
  for (const dev of out) {
    assertDeviceAllowed(dev, ctx.allowlist)
    await assertNotInUse(dev, inUse)
    if (ctx.guardSpecial) await assertNoSpecialFilesystems(dev)
  }
  return out
}

/** burnin_disk: fio readwrite with crc32c verification over every disk (DESTRUCTIVE), then optionally a SMART long test. */
export async function burninDisk(ctx: DiskBurninContext, node: NodeInfo | undefined, devices: readonly BlockDevice[]): Promise<BurninResult> {
  const targets = await diskBurninTargets(ctx, devices)
  const plan = fioDiskPlan(node, targets)
  if (!targets.length) throw new CleaningError('fio (disk): no block device to burn in (none visible, or all skipped)')
  const t0 = Date.now()
  const r = await runTool(ctx, 'fio (disk)', 'fio', plan.args, plan.timeoutSeconds)
  // fio reports on stdout (IPA logs it), or into the output file.
  const report = plan.outputfile ? await readFile(plan.outputfile, 'utf8') : r.stdout
  const jobs = parseFioJson(report)
  const seconds = (Date.now() - t0) / 1000
  ctx.log.info('burn-in fio (disk) finished', {seconds, jobs, warnings: tail(r.stderr)})
  const failed = jobs.filter((j) => j.error !== 0)
  if (failed.length) throw new CommandExecutionError(`fio (disk) failed on ${failed.map((j) => `${j.name} (error ${j.error})`).join(', ')}`)
  if (plan.smartTest) await runSmartTests(ctx, targets)
  return {command: ['fio', ...plan.args], seconds, metrics: jobs, output_tail: tail(report)}
}

/** The SMART self-test status string of a device (`smartctl -ja`), or null when it has none. */
export function smartTestStatus(json: string): string | null {
  try {
    // biome-ignore lint/suspicious/noExplicitAny: smartctl's JSON, one optional path; the result is type-checked
    const s = (JSON.parse(json) as any)?.ata_smart_data?.self_test?.status?.string
    return typeof s === 'string' ? s : null
  } catch {
    return null
  }
}

/** IPA's agent_burnin_fio_disk_smart_test: start `smartctl -t long` everywhere, poll every 30 s, fail on any failed test. */
export async function runSmartTests(ctx: BurninContext, devices: readonly string[], pollMs = 30_000): Promise<void> {
  const startFailed: string[] = []
  for (const dev of devices) {
    const r = await run('smartctl', ['-t', 'long', dev], {allowFailure: true, timeoutMs: 120_000})
    if (r.exitCode !== 0) {
      ctx.log.error('starting a SMART self test failed', {device: dev, exitCode: r.exitCode, stdout: tail(r.stdout)})
      startFailed.push(dev)
    }
  }
  if (startFailed.length) throw new CleaningError(`fio (disk) failed to start SMART self test on ${startFailed.join(', ')}`)
  const pending = new Set(devices)
  const failed: string[] = []
  while (pending.size) {
    for (const dev of [...pending]) {
      const r = await run('smartctl', ['-ja', dev], {allowFailure: true, timeoutMs: 120_000})
      const status = smartTestStatus(r.stdout)
      if (status === null) {
        ctx.log.error('no SMART self-test status for the device', {device: dev})
        pending.delete(dev)
      } else if (status.includes('in progress')) {
        ctx.log.debug('SMART test still running', {device: dev})
      } else {
        if (status.includes('completed without error')) ctx.log.info('device passed the SMART test', {device: dev})
        else {
          ctx.log.warn('device failed the SMART test', {device: dev, status})
          failed.push(dev)
        }
        pending.delete(dev)
      }
    }
    if (pending.size) await new Promise((r) => setTimeout(r, pollMs))
  }
  if (failed.length) throw new CleaningError(`fio (disk) SMART test failed for ${failed.join(' ')}`)
}

export interface NetworkBurninOptions {
  /** Seconds between the reader's attempts to reach a partner that is not listening yet (default NETWORK_READER_RETRY_SECONDS). */
  retrySeconds?: number
}

/** errno values of a connect() to a partner that is not listening (yet) or not reachable (yet). */
const CONNECT_ERRNOS = new Set([111, 110, 113, 101]) // ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH

/**
 * fio failed only because the partner was not listening (yet): every job failed in connect(). fio
 * exits with the number of failed jobs (IPA tests for 16); the reason is on stderr ("func=connect")
 * or, with --output-format json, only in the report's per-job errno.
 */
export function isConnectFailure(err: unknown): boolean {
  if (!(err instanceof CommandFailedError)) return false
  if (/func=connect/.test(err.stderr)) return true
  if (err.exitCode !== FIO_NETWORK_NUMJOBS) return false
  try {
    const jobs = parseFioJson(err.stdout)
    return jobs.length > 0 && jobs.every((j) => CONNECT_ERRNOS.has(j.error))
  } catch {
    return true // no report at all, and every job failed: as IPA, take it for "partner not ready"
  }
}

async function fioNetworkDirection(
  ctx: BurninContext,
  plan: NetworkPlan,
  writer: boolean,
  outputfile: string | undefined,
  opts: NetworkBurninOptions,
): Promise<{role: string; jobs: FioJobSummary[]; attempts: number}> {
  const args = fioNetworkArgs(writer, plan.runtime.text, plan.partner, outputfile)
  const role = writer ? 'writer' : 'reader'
  // The reader waits at most the pairing timeout for its partner to listen; the transfer itself is
  // bounded by the runtime (the writer stops after it, the reader when the writer closes).
  const bound = plan.runtime.seconds + Math.max(120, Math.ceil(plan.runtime.seconds / 10))
  const deadline = Date.now() + plan.pairingTimeoutSeconds * 1000
  const wait = (opts.retrySeconds ?? NETWORK_READER_RETRY_SECONDS) * 1000
  for (let attempt = 1; ; attempt++) {
    // fio starts the writer's 16 jobs one after the other, each listening on its own port (9000 +
    // job number): the reader gives them time before every attempt, or only some of its jobs would
    // connect (a partial failure, which cannot be retried: those that connected are done).
    if (!writer) await new Promise((r) => setTimeout(r, wait))
    ctx.log.info('burn-in fio (network) command', {command: ['fio', ...args], role, attempt})
    try {
      const r = await run('fio', args, {timeoutMs: (writer ? plan.pairingTimeoutSeconds + bound : bound) * 1000})
      const report = outputfile ? await readFile(outputfile, 'utf8') : r.stdout
      const jobs = parseFioJson(report)
      ctx.log.info('burn-in fio (network) direction finished', {role, partner: plan.partner, jobs})
      return {role, jobs, attempts: attempt}
    } catch (err) {
      if (err instanceof ToolMissingError)
        throw new CommandExecutionError(`fio (network) failed: ${err.message} (build the ramdisk with the 'burnin' element: rdk build --element burnin)`)
      const msg = `fio (network) failed with error ${(err as Error).message}`
      if (writer || !isConnectFailure(err)) {
        ctx.log.error(msg)
        throw new CommandExecutionError(msg)
      }
      if (Date.now() + wait > deadline) {
        throw new CleaningError(
          `fio (network): the partner ${plan.partner} did not accept connections on TCP ports ${FIO_NETWORK_PORT}-${FIO_NETWORK_PORT + FIO_NETWORK_NUMJOBS - 1} within ${plan.pairingTimeoutSeconds} s (agent_burnin_fio_network_pairing_timeout)`,
        )
      }
      ctx.log.info('fio (network): partner not ready, reader retrying', {partner: plan.partner, seconds: wait / 1000})
    }
  }
}

/**
 * burnin_network: fio's net engine between this node and its partner, first in the configured role,
 * then swapped (the writer's 16 jobs listen on TCP 9000-9015 on every address, the reader's connect).
 * Both nodes must run the step at about the same time.
 */
export async function burninNetwork(ctx: BurninContext, node: NodeInfo | undefined, opts: NetworkBurninOptions = {}): Promise<BurninResult> {
  const plan = networkPlan(node)
  ctx.log.info('fio (network): partner and role', {partner: plan.partner, role: plan.role})
  const t0 = Date.now()
  const writerFirst = plan.role === 'writer'
  const file = (role: string) => (plan.outputfile ? `${plan.outputfile}.${role}` : undefined)
  const first = await fioNetworkDirection(ctx, plan, writerFirst, file(plan.role), opts)
  ctx.log.debug('fio (network): first direction done, swapping roles')
  const second = await fioNetworkDirection(ctx, plan, !writerFirst, file(writerFirst ? 'reader' : 'writer'), opts)
  const seconds = (Date.now() - t0) / 1000
  return {
    command: ['fio', ...fioNetworkArgs(writerFirst, plan.runtime.text, plan.partner, file(plan.role))],
    seconds,
    metrics: [first, second],
    output_tail: '',
  }
}

// ------------------------------------------------------------------------------------------------
// GPU (gpu-burn, which no Debian package ships: it is expected in agent_burnin_gpu_install_dir)

export interface GpuPlan {
  installDir: string
  timeout: {text: string; seconds: number}
  memory: string
  count: number
}

export function gpuPlan(node: NodeInfo | undefined): GpuPlan {
  const info = infoOf(node)
  const dir = info.agent_burnin_gpu_install_dir ?? GPU_BURN_DEFAULT_DIR
  if (typeof dir !== 'string' || !path.isAbsolute(dir) || dir.includes('\0')) bad('agent_burnin_gpu_install_dir', dir, 'an absolute directory path')
  const timeout = durationSetting(info, 'agent_burnin_gpu_timeout', STRESS_NG_DEFAULT_TIMEOUT)
  const mem = info.agent_burnin_gpu_memory ?? '95%'
  const memory = typeof mem === 'number' && Number.isInteger(mem) && mem > 0 ? String(mem) : typeof mem === 'string' ? mem.trim() : ''
  if (!/^(?:\d+%|\d+)$/.test(memory)) bad('agent_burnin_gpu_memory', mem, 'a percentage such as "95%" or a size in MB')
  return {installDir: path.normalize(dir), timeout, memory, count: intSetting(info, 'agent_burnin_gpu_count', 0)}
}

/** burnin_gpu: gpu-burn -m MEMORY TIMEOUT from agent_burnin_gpu_install_dir, after checking the GPU count when one is set. */
export async function burninGpu(ctx: BurninContext, node: NodeInfo | undefined): Promise<BurninResult> {
  const plan = gpuPlan(node)
  const exe = path.join(plan.installDir, 'gpu_burn')
  if (plan.count > 0) {
    const r = await runTool(ctx, 'gpu-burn', exe, ['-l'], 120, {cwd: plan.installDir})
    const found = r.stdout.split('\n').filter((l) => l.startsWith('ID')).length
    if (found !== plan.count) {
      throw new CleaningError(`gpu-burn failed to find the correct number of gpus. ${found} found but ${plan.count} expected.`)
    }
  } else {
    ctx.log.debug("burn-in gpu skips the GPU count check: 'agent_burnin_gpu_count' is 0")
  }
  const t0 = Date.now()
  const args = ['-m', plan.memory, String(plan.timeout.seconds)]
  const r = await runTool(ctx, 'gpu-burn', exe, args, stressBound(plan.timeout.seconds), {cwd: plan.installDir})
  const seconds = (Date.now() - t0) / 1000
  ctx.log.info('burn-in gpu-burn finished', {seconds, output: tail(r.stdout)})
  return {command: [exe, ...args], seconds, metrics: null, output_tail: tail(r.stdout)}
}
