/**
 * Test harness: a REAL ironic-inspector 11.1 (Debian bookworm python3-ironic-inspector) on
 * 127.0.0.1, next to the real Ironic of test/helpers/ironic.ts.
 *
 * API and conductor run in one process (ironic_inspector.cmd.all, `standalone = True`,
 * `transport_url = fake://`) from test/helpers/inspector-launcher.py with /usr/bin/python3.
 * No authentication, sqlite in `dir`, no PXE filter (`[pxe_filter] driver = noop`: no dnsmasq,
 * no iptables), no swift (`[processing] store_data = database`, so Ironic can fetch the processed
 * data), a file coordination backend in `dir` (nothing to connect to). It talks to Ironic only
 * (auth_type none + endpoint_override, 127.0.0.1). Default processing hooks: the `scheduler`
 * hook sets the node's cpus / memory_mb / local_gb / cpu_arch from the agent's inventory.
 *
 * Start order: pick the inspector's port (freePort), start Ironic with `inspector: {url}`, then
 * startInspector({port, ironicUrl}). Stop by PID (stop()). Logs: `<dir>/inspector.log`.
 */
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {closeSync, existsSync, mkdirSync, openSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {fetchJson, freePort, sleep} from './http.js'
import {errorSummary, IRONIC_PYTHON, mergeConfig, pythonEnv, readTail, renderIni, trackChild, waitFor, type Config} from './ironic.js'

export const INSPECTOR_LAUNCHER = fileURLToPath(new URL('./inspector-launcher.py', import.meta.url))
const INSTALL_HINT =
  'ironic-inspector is not available: /usr/bin/python3 cannot import "ironic_inspector". ' +
  'Install it with `apt-get install python3-ironic-inspector` (Debian bookworm, 11.1).'

export interface InspectorOptions {
  /** A directory owned by the test (db, logs, ramdisk logs go there). */
  dir: string
  /** Ironic's API, http://127.0.0.1:<port>. */
  ironicUrl: string
  /** Port to listen on (127.0.0.1). Default: a free one. Ironic must be told it beforehand. */
  port?: number
  /** section -> key -> value, merged last. */
  extraConfig?: Config
  env?: Record<string, string>
  startTimeoutMs?: number
}

export interface Inspector {
  url: string
  port: number
  pid: number
  dir: string
  logFile: string
  configFile: string
  config: Config
  /** GET/POST… on inspector's API (X-OpenStack-Ironic-Inspector-API-Version: 1.18 unless given). */
  api<T = any>(method: string, path: string, body?: unknown): Promise<{status: number; body: T}>
  /** GET /v1/introspection/<uuid>: {finished, state, error, …}. */
  status(uuid: string): Promise<any>
  /** GET /v1/introspection/<uuid>/data (processed data; needs store_data = database). */
  data(uuid: string): Promise<any>
  logTail(lines?: number): Promise<string>
  stop(): Promise<void>
}

let availableCache: boolean | undefined
export function inspectorAvailable(): boolean {
  if (availableCache === undefined) {
    availableCache =
      existsSync(IRONIC_PYTHON) &&
      spawnSync(IRONIC_PYTHON, ['-c', 'import ironic_inspector.cmd.all'], {stdio: 'ignore', env: pythonEnv(process.env, {}), timeout: 60_000}).status === 0
  }
  return availableCache
}

function buildConfig(p: {dir: string; port: number; ironicUrl: string}): Config {
  const d = (...parts: string[]) => path.join(p.dir, ...parts)
  return {
    DEFAULT: {
      debug: 'true',
      log_dir: p.dir,
      log_file: 'inspector.log',
      use_stderr: 'false',
      host: `rdk-inspector-${p.port}`,
      auth_strategy: 'noauth',
      listen_address: '127.0.0.1',
      listen_port: String(p.port),
      standalone: 'true',
      transport_url: 'fake://',
      // Ironic's own status_check_period decides how fast a node leaves `inspect wait`.
      timeout: '1800',
      introspection_delay: '0',
      // sync_with_ironic / clean-up periodics: nothing to clean in a test.
      clean_up_period: '60',
      enable_mdns: 'false',
    },
    database: {connection: `sqlite:///${d('inspector.sqlite')}`},
    coordination: {backend_url: `file://${d('coordination')}`},
    ironic: {
      auth_type: 'none',
      endpoint_override: p.ironicUrl,
      retry_interval: '1',
      max_retries: '30',
    },
    pxe_filter: {driver: 'noop'},
    processing: {
      store_data: 'database',
      ramdisk_logs_dir: d('ramdisk-logs'),
      always_store_ramdisk_logs: 'true',
      power_off: 'true',
    },
  }
}

async function runDbsync(configFile: string, env: NodeJS.ProcessEnv, logFile: string): Promise<void> {
  const r = spawnSync(IRONIC_PYTHON, [INSPECTOR_LAUNCHER, 'dbsync', '--config-file', configFile], {env, encoding: 'utf8', timeout: 120_000})
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`
  writeFileSync(logFile, `==== inspector dbsync upgrade (exit ${r.status}) ====\n${out}\n`, {flag: 'a'})
  if (r.status !== 0)
    throw new Error(`ironic-inspector dbsync failed (exit ${r.status}${r.error ? `, ${r.error.message}` : ''}):\n${out.split('\n').slice(-40).join('\n')}`)
}

export async function startInspector(opts: InspectorOptions): Promise<Inspector> {
  if (!inspectorAvailable()) throw new Error(INSTALL_HINT)
  const dir = path.resolve(opts.dir)
  for (const sub of ['tmp', 'coordination', 'ramdisk-logs']) mkdirSync(path.join(dir, sub), {recursive: true})
  const port = opts.port ?? (await freePort())
  const config = mergeConfig(buildConfig({dir, port, ironicUrl: opts.ironicUrl}), opts.extraConfig)
  const configFile = path.join(dir, 'inspector.conf')
  writeFileSync(configFile, renderIni(config))
  const logFile = path.resolve(config.DEFAULT?.log_dir ?? dir, config.DEFAULT?.log_file ?? 'inspector.log')
  const url = `http://127.0.0.1:${port}`
  const env = pythonEnv(process.env, {TMPDIR: path.join(dir, 'tmp'), ...opts.env})
  await runDbsync(configFile, env, logFile)

  const logFd = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn(IRONIC_PYTHON, [INSPECTOR_LAUNCHER, 'serve', '--config-file', configFile], {
      cwd: dir,
      env: {...env, RDK_INSPECTOR_WATCH_STDIN: '1'},
      stdio: ['pipe', logFd, logFd],
    })
  } finally {
    closeSync(logFd)
  }
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve))
  if (child.pid === undefined) throw new Error(`failed to start ironic-inspector: ${(await spawnError).message}`)
  const pid = child.pid
  child.stdin?.on('error', () => {})
  trackChild(child)
  let exitInfo: {code: number | null; signal: NodeJS.Signals | null} | undefined
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = {code, signal}
      resolve()
    })
  })

  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exitInfo === undefined) {
        try {
          process.kill(pid, 'SIGTERM')
        } catch {
          // gone
        }
        if (!(await waitFor(exited, 15_000)) && exitInfo === undefined) {
          try {
            process.kill(pid, 'SIGKILL')
          } catch {
            // gone
          }
          await waitFor(exited, 5_000)
        }
      }
      child.stdin?.destroy()
    })()
    return stopping
  }
  const logTail = (lines = 60) => readTail(logFile, lines)

  const deadline = Date.now() + (opts.startTimeoutMs ?? 90_000)
  let lastProblem = 'no answer yet'
  for (;;) {
    if (exitInfo !== undefined) {
      await stop()
      throw new Error(
        `ironic-inspector exited during start-up (code ${exitInfo.code}, signal ${exitInfo.signal}); config ${configFile}\n` +
          `${await errorSummary(logFile)}last lines of ${logFile}:\n${await logTail(80)}`,
      )
    }
    try {
      const r = await fetchJson(`${url}/`, {timeoutMs: 5_000})
      if (r.status === 200) break
      lastProblem = `GET / answered ${r.status}`
    } catch (e) {
      lastProblem = (e as Error).message
    }
    if (Date.now() > deadline) {
      const tail = await logTail(80)
      await stop()
      throw new Error(
        `ironic-inspector did not become ready at ${url} (${lastProblem}); config ${configFile}\n${await errorSummary(logFile)}last lines of ${logFile}:\n${tail}`,
      )
    }
    await sleep(250)
  }

  const api = async <T = any>(method: string, p: string, body?: unknown) => {
    const r = await fetchJson<T>(`${url}${p}`, {method, body, headers: {'X-OpenStack-Ironic-Inspector-API-Version': '1.18'}})
    return {status: r.status, body: r.body}
  }
  const getOk = async (p: string) => {
    const r = await api('GET', p)
    if (r.status !== 200) throw new Error(`ironic-inspector GET ${p} answered ${r.status}: ${JSON.stringify(r.body)}`)
    return r.body
  }
  return {
    url,
    port,
    pid,
    dir,
    logFile,
    configFile,
    config,
    api,
    status: (uuid) => getOk(`/v1/introspection/${uuid}`),
    data: (uuid) => getOk(`/v1/introspection/${uuid}/data`),
    logTail,
    stop,
  }
}
