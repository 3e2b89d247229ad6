// Test harness: a REAL Ironic on 127.0.0.1: Debian bookworm's python3-ironic 21.4 (default), or
// Debian trixie's 29.0.5 (OpenStack 2025.1, `ironic: '29'`) from the chroot .ci/install-deps builds.
//
// API and conductor run in one process (ironic.cmd.singleprocess, rpc_transport = none) started
// from test/helpers/ironic-launcher.py with the Debian interpreter /usr/bin/python3 (the
// `python3` on PATH may be a pyenv build that cannot import Debian packages). Everything Ironic
// writes (sqlite db, logs, image caches, temp files, deploy logs) stays inside `opts.dir`.
//
// Driver setup: fake-hardware with fake boot/power/management, `direct` deploy, `agent`
// raid/rescue, `noop` network. The launcher patches fake management to accept the boot device
// `disk` (see the launcher's docstring), otherwise a direct deploy fails at its very end.
//
// Ironic 29 runs in that chroot through test/helpers/ironic29-chroot.py (a private mount namespace:
// the test dir bound at the same path, a fresh /proc; `env -i`), so all paths below stay valid. Its
// config adds built-in inspection (inspect interface `agent`, no ironic-inspector), and the launcher
// also works around the 29.0.5 parent_node bug (see the launcher's docstring).
//
// See the shared notes beside the checkout (shared/README.md, "Running a real Ironic on loopback",
// and shared/reference/ironic-wire.md) for what this Ironic expects on the wire.
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {closeSync, copyFileSync, existsSync, mkdirSync, openSync, writeFileSync} from 'node:fs'
import {open, stat} from 'node:fs/promises'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {fetchJson, freePort, sleep} from './http.js'

export {freePort} from './http.js'

export const IRONIC_PYTHON = '/usr/bin/python3'
export const IRONIC_LAUNCHER = fileURLToPath(new URL('./ironic-launcher.py', import.meta.url))
export const IRONIC29_CHROOT_HELPER = fileURLToPath(new URL('./ironic29-chroot.py', import.meta.url))
/** Where .ci/install-deps builds the trixie chroot with Ironic 29 (RDK_IRONIC29_ROOT moves it). */
export const IRONIC29_ROOT = process.env.RDK_IRONIC29_ROOT || '/var/cache/rdk-ci/ironic29-trixie'
const INSTALL_HINT =
  'Ironic is not available: /usr/bin/python3 cannot import the "ironic" package. ' +
  'Install it with `apt-get install python3-ironic` (Debian bookworm, Ironic 21.4).'
const INSTALL_HINT_29 =
  `Ironic 29 is not available: no complete Debian trixie chroot at ${IRONIC29_ROOT} ` +
  '(build it with .ci/install-deps, which needs the Debian package mmdebstrap; RDK_IRONIC29_ROOT moves it).'

/** Which real Ironic: bookworm's 21.4 on the host, or trixie's 29.0.x in a chroot. */
export type IronicRelease = '21.4' | '29'

export interface IronicOptions {
  dir: string // a fresh temp dir owned by the test
  /** Which Ironic. Default '21.4'. '29' also enables built-in inspection (see builtinInspection). */
  ironic?: IronicRelease
  heartbeatTimeout?: number // [api] ramdisk_heartbeat_timeout, default 30
  fastTrack?: boolean // [deploy] fast_track, default false
  extraConfig?: Record<string, Record<string, string>> // section -> key -> value, merged last
  env?: Record<string, string> // extra environment for the Ironic process (e.g. http_proxy)
  /** [deploy] http_url. Default: http://127.0.0.1:<a port that was free at start>, see Ironic.httpUrl. */
  httpUrl?: string
  /** How long to wait for `GET /` to answer 200. Default 90 s. */
  startTimeoutMs?: number
  /**
   * Enable the `inspector` inspect interface (the default for new nodes) talking to an
   * ironic-inspector at `url` (test/helpers/inspector.ts). fake boot has no validate_inspection,
   * so Ironic leaves booting to inspector (start_introspection with manage_boot): inspector sets
   * boot device pxe and reboots the node through Ironic's fake power; the TEST boots the ramdisk.
   */
  inspector?: {
    url: string
    /** [inspector] callback_endpoint_override: what managed boot would put in the ramdisk's kernel
     * params; must not be a loopback address (Ironic refuses those). Default: url with 10.0.2.2. */
    callbackUrl?: string
    /** [inspector] status_check_period (s): how often Ironic polls inspector. Default 2. */
    statusCheckPeriod?: number
  }
}

export interface ApiOptions {
  version?: string
  expect?: number[]
}

export interface Ironic {
  /** Which Ironic runs. */
  release: IronicRelease
  /** ms from spawning the process to GET / answering (dbsync not included). */
  startMs: number
  url: string // http://127.0.0.1:<port>
  port: number
  pid: number
  dir: string
  logFile: string
  /** The generated ironic.conf. */
  configFile: string
  /** The server's max API version from `GET /` (e.g. "1.82"); the default for api(). */
  maxVersion: string
  /** [deploy] http_url: Ironic expects an http server serving httpRoot there (start one if needed). */
  httpUrl: string
  /** [deploy] http_root (inside dir). */
  httpRoot: string
  /** Every config value written, section -> key -> value (after extraConfig). */
  config: Record<string, Record<string, string>>
  api<T = any>(method: string, path: string, body?: unknown, opts?: ApiOptions): Promise<{status: number; body: T}>
  createNode(opts?: {
    name?: string
    /** Other node fields for POST /v1/nodes (e.g. inspect_interface, boot_interface). */
    fields?: Record<string, unknown>
    properties?: Record<string, unknown>
    driverInfo?: Record<string, unknown>
    instanceInfo?: Record<string, unknown>
  }): Promise<any>
  createPort(nodeUuid: string, mac: string): Promise<any>
  setProvisionState(uuid: string, target: string, extra?: Record<string, unknown>): Promise<void>
  waitForProvisionState(uuid: string, states: string[], opts?: {timeoutMs?: number; failStates?: string[]}): Promise<any>
  getNode(uuid: string): Promise<any>
  logTail(lines?: number): Promise<string>
  /** SIGTERM our process (by PID), SIGKILL after a grace period. Idempotent. */
  stop(): Promise<void>
}

let availableCache: boolean | undefined

/** True if the chroot .ci/install-deps builds for Ironic 29 is complete (and we can chroot: root). */
export function ironic29Available(): boolean {
  return existsSync(path.join(IRONIC29_ROOT, '.rdk-complete')) && process.getuid?.() === 0
}

/** True if /usr/bin/python3 can import ironic (python3-ironic installed); for '29', ironic29Available(). */
export function ironicAvailable(release: IronicRelease = '21.4'): boolean {
  if (release === '29') return ironic29Available()
  if (availableCache === undefined) {
    if (!existsSync(IRONIC_PYTHON)) {
      availableCache = false
    } else {
      const r = spawnSync(IRONIC_PYTHON, ['-c', 'import ironic.cmd'], {
        stdio: 'ignore',
        env: pythonEnv(process.env, {}),
        timeout: 60_000,
      })
      availableCache = r.status === 0
    }
  }
  return availableCache
}

// ---- process bookkeeping: make sure no Ironic outlives the test process -------------------

const running = new Set<ChildProcess>()
let exitHookInstalled = false
/** Kill `child` (SIGKILL by PID) when this process exits, if it is still running. */
export function trackChild(child: ChildProcess): void {
  running.add(child)
  child.once('exit', () => running.delete(child))
  if (!exitHookInstalled) {
    exitHookInstalled = true
    // Last resort if a test forgot stop(): synchronous SIGKILL of the PIDs we started.
    // (The launcher also exits by itself when its stdin pipe from us closes.)
    process.once('exit', () => {
      for (const c of running) {
        if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
          try {
            process.kill(c.pid, 'SIGKILL')
          } catch {
            // already gone
          }
        }
      }
    })
  }
}

// ---- config ---------------------------------------------------------------------------------

export type Config = Record<string, Record<string, string>>

export function renderIni(config: Config): string {
  const out: string[] = ['# generated by rdk test helpers (test/helpers/ironic.ts renderIni)']
  for (const [section, kv] of Object.entries(config)) {
    out.push('', `[${section}]`)
    for (const [k, v] of Object.entries(kv)) {
      if (/[\r\n]/.test(v)) throw new Error(`ironic config ${section}.${k}: newline in value`)
      out.push(`${k} = ${v}`)
    }
  }
  return `${out.join('\n')}\n`
}

function buildConfig(p: {
  dir: string
  port: number
  httpUrl: string
  heartbeatTimeout: number
  fastTrack: boolean
  inspector?: IronicOptions['inspector']
  release: IronicRelease
}): Config {
  const d = (...parts: string[]) => path.join(p.dir, ...parts)
  const enabled = (kind: string, impl: string): Record<string, string> => ({
    [`enabled_${kind}_interfaces`]: impl,
    [`default_${kind}_interface`]: impl,
  })
  return {
    DEFAULT: {
      debug: 'true',
      log_dir: p.dir,
      log_file: 'ironic.log',
      use_stderr: 'false',
      host: `rdk-test-${p.port}`,
      my_ip: '127.0.0.1',
      auth_strategy: 'noauth',
      rpc_transport: 'none',
      state_path: d('state'),
      tempdir: d('tmp'),
      graceful_shutdown_timeout: '5',
      enabled_hardware_types: 'fake-hardware',
      ...enabled('boot', 'fake'),
      ...enabled('power', 'fake'),
      ...enabled('management', 'fake'),
      ...enabled('deploy', 'direct'),
      ...enabled('network', 'noop'),
      ...enabled('raid', 'agent'),
      ...enabled('rescue', 'agent'),
      ...enabled('bios', 'no-bios'),
      ...enabled('console', 'no-console'),
      ...(p.inspector
        ? {enabled_inspect_interfaces: 'no-inspect,inspector', default_inspect_interface: 'inspector'}
        : p.release === '29'
          ? // Built-in inspection (ironic-inspector is retired in 2025.1): the agent posts to
            // <api>/v1/continue_inspection.
            {enabled_inspect_interfaces: 'agent,no-inspect,fake', default_inspect_interface: 'agent'}
          : enabled('inspect', 'no-inspect')),
      ...enabled('storage', 'noop'),
      ...enabled('vendor', 'no-vendor'),
    },
    api: {
      host_ip: '127.0.0.1',
      port: String(p.port),
      api_workers: '1',
      ramdisk_heartbeat_timeout: String(p.heartbeatTimeout),
    },
    database: {
      connection: `sqlite:///${d('ironic.sqlite')}`,
    },
    dhcp: {
      dhcp_provider: 'none',
    },
    agent: {
      image_download_source: 'http',
      verify_ca: 'False',
      command_wait_interval: '2',
      command_timeout: '30',
      // The agent powers itself off at the end of a deploy but fake power never changes:
      // do not poll the power state 6 x 5 s before falling back to an out-of-band power off.
      post_deploy_get_power_state_retries: '1',
      deploy_logs_local_path: d('deploy-logs'),
      certificates_path: d('certificates'),
    },
    deploy: {
      http_url: p.httpUrl,
      http_root: d('httpboot'),
      fast_track: p.fastTrack ? 'true' : 'false',
      // "should not exceed [api]ramdisk_heartbeat_timeout" (ironic/conf/deploy.py)
      fast_track_timeout: String(Math.min(p.heartbeatTimeout, 300)),
      iso_master_path: d('master_iso_images'),
    },
    conductor: {
      automated_clean: 'true',
      sync_power_state_interval: '-1',
      deploy_kernel: `${p.httpUrl}/deploy_kernel`,
      deploy_ramdisk: `${p.httpUrl}/deploy_ramdisk`,
      file_url_allowed_paths: p.dir,
      ...(p.release === '29' ? {inspect_wait_timeout: '900'} : {}),
    },
    pxe: {
      images_path: d('images'),
      instance_master_path: d('master_images'),
      tftp_root: d('tftpboot'),
      tftp_master_path: d('tftpboot', 'master_images'),
    },
    ...(p.inspector
      ? {
          inspector: {
            auth_type: 'none',
            endpoint_override: p.inspector.url,
            callback_endpoint_override: p.inspector.callbackUrl ?? p.inspector.url.replace(/^(https?:\/\/)(127\.0\.0\.1|localhost)(?=[:/]|$)/, '$110.0.2.2'),
            status_check_period: String(p.inspector.statusCheckPeriod ?? 2),
          },
        }
      : {}),
    ...(p.release === '29'
      ? {
          inspector: {
            // fake boot cannot validate managed inspection: the test boots the ramdisk itself.
            require_managed_boot: 'false',
            // The default hooks fill only cpu_arch and ports; these add memory_mb, cpus,
            // capabilities (cpu flags, boot mode) and local_gb (root device).
            hooks: '$default_hooks,memory,cpu-capabilities,boot-mode,root-device',
          },
          auto_discovery: {enabled: 'false'},
        }
      : {}),
    service_catalog: {
      // Required: without them cleaning fails at once with
      // "Couldn't get the URL of the Ironic API service". In 29 also the inspection callback's base.
      auth_type: 'none',
      endpoint_override: `http://127.0.0.1:${p.port}`,
    },
  }
}

export function mergeConfig(base: Config, extra: Config | undefined): Config {
  const out: Config = {}
  for (const [s, kv] of Object.entries(base)) out[s] = {...kv}
  for (const [s, kv] of Object.entries(extra ?? {})) out[s] = {...(out[s] ?? {}), ...kv}
  return out
}

// Proxy variables of the test environment must not leak into Ironic (it would send its
// conductor -> agent traffic through them); PYTHONPATH/PYTHONHOME could point at pyenv.
const SCRUBBED_ENV = [
  'http_proxy',
  'https_proxy',
  'all_proxy',
  'no_proxy',
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'ALL_PROXY',
  'NO_PROXY',
  'PYTHONPATH',
  'PYTHONHOME',
  'PYTHONSTARTUP',
  'VIRTUAL_ENV',
  'OS_CLOUD',
]

/** The environment for a Debian-python service: no proxy/python variables from the test run, loopback direct. */
export function pythonEnv(base: NodeJS.ProcessEnv, extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {...base}
  for (const k of SCRUBBED_ENV) delete env[k]
  env.no_proxy = '127.0.0.1,localhost'
  env.NO_PROXY = '127.0.0.1,localhost'
  env.PYTHONUNBUFFERED = '1'
  env.PYTHONDONTWRITEBYTECODE = '1'
  return {...env, ...extra}
}

// ---- helpers ---------------------------------------------------------------------------------

export async function readTail(file: string, lines: number): Promise<string> {
  try {
    const size = (await stat(file)).size
    const max = 512 * 1024
    const fh = await open(file, 'r')
    try {
      const start = Math.max(0, size - max)
      const buf = Buffer.alloc(size - start)
      await fh.read(buf, 0, buf.length, start)
      const all = buf.toString('utf8').split('\n')
      if (all.length > 0 && all[all.length - 1] === '') all.pop()
      return all.slice(-lines).join('\n')
    } finally {
      await fh.close()
    }
  } catch (e) {
    return `(cannot read ${file}: ${(e as Error).message})`
  }
}

/** Resolves true when p settles within ms, false otherwise; never keeps the event loop alive. */
export function waitFor(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms)
    timer.unref()
    p.then(
      () => {
        clearTimeout(timer)
        resolve(true)
      },
      () => {
        clearTimeout(timer)
        resolve(true)
      },
    )
  })
}

/** The first and the last ERROR/CRITICAL lines of the log (the cause of a failed start-up). */
export async function errorSummary(file: string): Promise<string> {
  const tail = await readTail(file, 2000)
  const errs = tail
    .split('\n')
    // oslo.log format: "<date> <time> <pid> <LEVEL> <logger> ..."
    .filter((l) => /^\S+ \S+ \d+ (ERROR|CRITICAL) \S+ \S/.test(l))
  if (errs.length === 0) return ''
  const pick = errs.length === 1 ? errs : [errs[0], errs[errs.length - 1]]
  return `${pick.map((l) => `  ${l.slice(0, 400)}`).join('\n')}\n`
}

/** Ironic's error bodies are {"error_message": "<JSON string with faultstring>"}. */
function describeError(body: unknown): string {
  if (body && typeof body === 'object' && 'error_message' in body) {
    const em = (body as {error_message: unknown}).error_message
    if (typeof em === 'string') {
      try {
        const inner = JSON.parse(em) as {faultstring?: string}
        if (inner.faultstring) return inner.faultstring
      } catch {
        return em
      }
    }
  }
  return typeof body === 'string' ? body : JSON.stringify(body)
}

/** How to run the Ironic Python with `pyArgs`: on the host (21.4) or in the trixie chroot (29). */
interface PythonCommand {
  file: string
  args: string[]
  env: NodeJS.ProcessEnv
}
type PythonRunner = (pyArgs: string[], extraEnv?: Record<string, string>) => PythonCommand

function hostPython(env: NodeJS.ProcessEnv): PythonRunner {
  return (pyArgs, extraEnv = {}) => ({file: IRONIC_PYTHON, args: pyArgs, env: {...env, ...extraEnv}})
}

/**
 * unshare --mount (private) → ironic29-chroot.py (binds dir at the same path, mounts /proc,
 * chroots, execs with exactly `env`, as env -i). No fork anywhere: the child's PID is Python's.
 */
function chrootPython(dir: string, env: Record<string, string>): PythonRunner {
  return (pyArgs, extraEnv = {}) => {
    const envArgs = Object.entries({...env, ...extraEnv}).flatMap(([k, v]) => ['--env', `${k}=${v}`])
    return {
      file: 'unshare',
      args: [
        '--mount',
        '--propagation',
        'private',
        '--',
        IRONIC_PYTHON,
        IRONIC29_CHROOT_HELPER,
        IRONIC29_ROOT,
        dir,
        ...envArgs,
        '--',
        '/usr/bin/python3',
        ...pyArgs,
      ],
      env: {PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'},
    }
  }
}

async function runDbsync(configFile: string, python: PythonRunner, logFile: string): Promise<void> {
  const args = ['-c', 'import sys; from ironic.cmd import dbsync; sys.exit(dbsync.main())', '--config-file', configFile, 'create_schema']
  const r = await new Promise<{code: number | null; signal: string | null; out: string; error?: Error}>((resolve) => {
    const chunks: Buffer[] = []
    const cmd = python(args)
    const child = spawn(cmd.file, cmd.args, {env: cmd.env, stdio: ['ignore', 'pipe', 'pipe']})
    child.stdout.on('data', (b: Buffer) => chunks.push(b))
    child.stderr.on('data', (b: Buffer) => chunks.push(b))
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
    child.once('error', (error) => {
      clearTimeout(timer)
      resolve({code: null, signal: null, out: Buffer.concat(chunks).toString('utf8'), error})
    })
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      resolve({code, signal, out: Buffer.concat(chunks).toString('utf8')})
    })
  })
  writeFileSync(logFile, `==== ironic dbsync create_schema (exit ${r.code}) ====\n${r.out}\n`, {flag: 'a'})
  if (r.code !== 0) {
    throw new Error(
      `ironic dbsync create_schema failed (exit ${r.code}${r.signal ? `, signal ${r.signal}` : ''}` +
        `${r.error ? `, ${r.error.message}` : ''}):\n${r.out.split('\n').slice(-40).join('\n')}`,
    )
  }
}

// ---- main entry point ----------------------------------------------------------------------------

export async function startIronic(opts: IronicOptions): Promise<Ironic> {
  const release: IronicRelease = opts.ironic ?? '21.4'
  if (!ironicAvailable(release)) throw new Error(release === '29' ? INSTALL_HINT_29 : INSTALL_HINT)

  const dir = path.resolve(opts.dir)
  for (const sub of ['state', 'tmp', 'httpboot', 'images', 'master_images', 'master_iso_images', 'tftpboot', 'deploy-logs', 'certificates']) {
    mkdirSync(path.join(dir, sub), {recursive: true})
  }

  const port = await freePort()
  const httpUrl = opts.httpUrl ?? `http://127.0.0.1:${await freePort()}`
  const heartbeatTimeout = opts.heartbeatTimeout ?? 30
  const config = mergeConfig(
    buildConfig({dir, port, httpUrl, heartbeatTimeout, fastTrack: opts.fastTrack ?? false, inspector: opts.inspector, release}),
    opts.extraConfig,
  )
  // extraConfig may move the API port; the harness follows it.
  const apiPort = Number(config.api?.port ?? port)
  const url = `http://127.0.0.1:${apiPort}`
  const configFile = path.join(dir, 'ironic.conf')
  writeFileSync(configFile, renderIni(config))
  const logDir = config.DEFAULT?.log_dir ?? dir
  const logFile = path.resolve(logDir, config.DEFAULT?.log_file ?? 'ironic.log')

  let python: PythonRunner
  let launcher = IRONIC_LAUNCHER
  if (release === '29') {
    // Only what Ironic needs (env -i): no variable of the test run leaks into the chroot.
    python = chrootPython(dir, {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      LANG: 'C.UTF-8',
      HOME: dir,
      TMPDIR: path.join(dir, 'tmp'),
      PYTHONUNBUFFERED: '1',
      PYTHONDONTWRITEBYTECODE: '1',
      no_proxy: '127.0.0.1,localhost',
      NO_PROXY: '127.0.0.1,localhost',
      RDK_IRONIC_PATCH_PARENT_NODE: '1',
      ...opts.env,
    })
    // The chroot sees only dir (bound at the same path): the launcher goes there.
    launcher = path.join(dir, 'ironic-launcher.py')
    copyFileSync(IRONIC_LAUNCHER, launcher)
  } else {
    python = hostPython(pythonEnv(process.env, {TMPDIR: path.join(dir, 'tmp'), ...opts.env}))
  }
  await runDbsync(configFile, python, logFile)

  const logFd = openSync(logFile, 'a')
  let child: ChildProcess
  const spawnedAt = Date.now()
  try {
    const cmd = python([launcher, '--config-file', configFile], {RDK_IRONIC_WATCH_STDIN: '1'})
    child = spawn(cmd.file, cmd.args, {
      cwd: dir,
      env: cmd.env,
      // stdin: a pipe we never write to; the launcher exits when it closes (we died).
      stdio: ['pipe', logFd, logFd],
    })
  } finally {
    closeSync(logFd)
  }
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve))
  if (child.pid === undefined) {
    throw new Error(`failed to start Ironic: ${(await spawnError).message}`)
  }
  const pid = child.pid
  child.stdin?.on('error', () => {}) // EPIPE etc. once Ironic is gone: irrelevant
  trackChild(child)
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({code: child.exitCode, signal: child.signalCode})
    else child.once('exit', (code, signal) => resolve({code, signal}))
  })
  let exitInfo: {code: number | null; signal: NodeJS.Signals | null} | undefined
  void exited.then((e) => (exitInfo = e))

  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exitInfo === undefined) {
        try {
          process.kill(pid, 'SIGTERM')
        } catch {
          // already gone
        }
        // graceful_shutdown_timeout = 5 makes Ironic itself give up after 5 s.
        const graceful = await waitFor(exited, 15_000)
        if (!graceful && exitInfo === undefined) {
          try {
            process.kill(pid, 'SIGKILL')
          } catch {
            // already gone
          }
          await waitFor(exited, 5_000)
        }
      }
      child.stdin?.destroy()
    })()
    return stopping
  }

  const logTail = (lines = 60) => readTail(logFile, lines)

  // Readiness: GET / answers 200 (the conductor is started before the API in singleprocess).
  const deadline = Date.now() + (opts.startTimeoutMs ?? 90_000)
  let root: any
  let lastProblem = 'no answer yet'
  while (true) {
    if (exitInfo !== undefined) {
      await stop() // nothing to kill; releases our end of its stdin pipe
      throw new Error(
        `Ironic exited during start-up (code ${exitInfo.code}, signal ${exitInfo.signal}); ` +
          `config ${configFile}\n${await errorSummary(logFile)}last lines of ${logFile}:\n${await logTail(80)}`,
      )
    }
    try {
      const r = await fetchJson(`${url}/`, {timeoutMs: 5_000})
      if (r.status === 200 && r.body?.default_version?.version) {
        root = r.body
        break
      }
      lastProblem = `GET / answered ${r.status}`
    } catch (e) {
      lastProblem = (e as Error).message
    }
    if (Date.now() > deadline) {
      const tail = await logTail(80)
      await stop()
      throw new Error(
        `Ironic did not become ready at ${url} within ${opts.startTimeoutMs ?? 90_000} ms ` +
          `(${lastProblem}); config ${configFile}\n${await errorSummary(logFile)}last lines of ${logFile}:\n${tail}`,
      )
    }
    await sleep(250)
  }
  const maxVersion: string = root.default_version.version
  const startMs = Date.now() - spawnedAt

  const api = async <T = any>(method: string, p: string, body?: unknown, o: ApiOptions = {}): Promise<{status: number; body: T}> => {
    const r = await fetchJson<T>(`${url}${p.startsWith('/') ? '' : '/'}${p}`, {
      method,
      body,
      headers: {'X-OpenStack-Ironic-API-Version': o.version ?? maxVersion},
    })
    const ok = o.expect ? o.expect.includes(r.status) : r.status >= 200 && r.status < 300
    if (!ok) {
      throw new Error(
        `Ironic API ${method} ${p} answered ${r.status} ` +
          `(expected ${o.expect ? o.expect.join('/') : '2xx'}): ${describeError(r.body)}\n` +
          `body: ${typeof r.body === 'string' ? r.body : JSON.stringify(r.body)}`,
      )
    }
    return {status: r.status, body: r.body}
  }

  const getNode = async (uuid: string) => (await api('GET', `/v1/nodes/${uuid}`)).body

  const ironic: Ironic = {
    release,
    startMs,
    url,
    port: apiPort,
    pid,
    dir,
    logFile,
    configFile,
    maxVersion,
    httpUrl: config.deploy?.http_url ?? httpUrl,
    httpRoot: config.deploy?.http_root ?? path.join(dir, 'httpboot'),
    config,
    api,
    getNode,
    logTail,
    stop,

    async createNode(o = {}) {
      const body: Record<string, unknown> = {
        driver: 'fake-hardware',
        properties: o.properties ?? {},
        driver_info: o.driverInfo ?? {},
        instance_info: o.instanceInfo ?? {},
      }
      if (o.name !== undefined) body.name = o.name
      Object.assign(body, o.fields ?? {})
      return (await api('POST', '/v1/nodes', body, {expect: [201]})).body
    },

    async createPort(nodeUuid, mac) {
      return (await api('POST', '/v1/ports', {node_uuid: nodeUuid, address: mac}, {expect: [201]})).body
    },

    async setProvisionState(uuid, target, extra = {}) {
      await api('PUT', `/v1/nodes/${uuid}/states/provision`, {target, ...extra}, {expect: [202]})
    },

    async waitForProvisionState(uuid, states, o = {}) {
      const timeoutMs = o.timeoutMs ?? 120_000
      const failStates = o.failStates ?? ['clean failed', 'deploy failed', 'inspect failed', 'error']
      const deadline = Date.now() + timeoutMs
      let node: any
      while (true) {
        node = await getNode(uuid)
        const st: string = node.provision_state
        if (states.includes(st)) return node
        const reason = failStates.includes(st) ? `reached fail state "${st}"` : Date.now() > deadline ? `timed out after ${timeoutMs} ms` : undefined
        if (reason) {
          throw new Error(
            `node ${uuid}: waiting for provision state ${states.map((s) => `"${s}"`).join(' or ')}: ${reason}; ` +
              `provision_state="${st}" target_provision_state=${JSON.stringify(node.target_provision_state)} ` +
              `power_state=${JSON.stringify(node.power_state)} maintenance=${node.maintenance} ` +
              `last_error=${JSON.stringify(node.last_error)}\nlast lines of ${logFile}:\n${await logTail(60)}`,
          )
        }
        await sleep(500)
      }
    },
  }
  return ironic
}
