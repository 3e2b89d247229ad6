// Test helper: run the agent bundle (dist/agent.mjs) as a real child process on loopback.
//
// Defaults make a harmless standalone agent:
//   --standalone --agent-token <T> --listen-host 127.0.0.1 --listen-port 0 --cmdline ''
//   --device-allowlist /dev/nonexistent-test-device
// (`--cmdline ''` ignores /proc/cmdline; an allow-list naming no real device keeps the agent away
// from the machine's disks.) Extra `args` are appended; a default whose flag also appears in
// `args` is dropped, so callers can override any of them. `standalone: false` drops
// `--standalone` and, unless a token is given, `--agent-token` too (the token then comes from
// Ironic's lookup).
//
// The bundle path may be overridden with RDK_AGENT_BUNDLE (absolute path).
//
// Only the process started here is ever signalled, by its PID.
import {spawn, type ChildProcess} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {existsSync, readFileSync} from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const AGENT_BUNDLE = process.env.RDK_AGENT_BUNDLE || path.join(REPO_ROOT, 'dist', 'agent.mjs')

export interface AgentProcessOptions {
  /** Extra command-line arguments, appended after the defaults (and overriding them). */
  args?: string[]
  /** Agent token (>= 32 characters). Default: a random one (standalone), none (standalone: false). */
  token?: string
  /** Extra environment variables. */
  env?: Record<string, string>
  /** false drops `--standalone` (an agent that looks up and heartbeats). Default true. */
  standalone?: boolean
  /** How long to wait for the "agent API listening" line. Default 30 s. */
  startTimeoutMs?: number
  /** Bundle to run. Default AGENT_BUNDLE. */
  bundle?: string
  /** A program that execs the agent (e.g. ['ip', 'netns', 'exec', NS]): it must exec, so the PID stays the agent's. */
  wrap?: string[]
}

export interface AgentProcess {
  /** http(s)://127.0.0.1:<port> (https when the agent reported TLS). */
  url: string
  port: number
  pid: number
  /** The token passed with --agent-token ('' when none was passed). */
  token: string
  /** Everything the agent wrote on stdout and stderr so far (the last 16 MB at most). */
  logs(): string
  /** Exit code or signal once the process has exited, null while it runs. */
  exitStatus(): {code: number | null; signal: NodeJS.Signals | null} | null
  /** SIGTERM, then SIGKILL after 5 s; resolves when the process has exited. Idempotent. */
  stop(): Promise<void>
}

const MAX_LOG_CHARS = 16 * 1024 * 1024
const live = new Set<ChildProcess>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Never leave an agent behind if the test process dies: kill only the children started here.
  process.once('exit', () => {
    for (const child of live) {
      try {
        if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  })
}

/** The defaults, minus those whose flag the caller passes itself. */
function buildArgs(opts: AgentProcessOptions, token: string): string[] {
  const extra = opts.args ?? []
  const given = new Set(extra.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]))
  const defaults: [string, string | undefined][] = [
    ['--standalone', undefined],
    // '=' form: a base64url token may start with '-', which parseArgs would take for an option
    [`--agent-token=${token}`, undefined],
    ['--listen-host', '127.0.0.1'],
    ['--listen-port', '0'],
    ['--cmdline', ''],
    ['--device-allowlist', '/dev/nonexistent-test-device'],
  ]
  const out: string[] = []
  for (const [flag, value] of defaults) {
    if (given.has(flag.split('=')[0])) continue
    if (flag === '--standalone' && opts.standalone === false) continue
    if (flag.startsWith('--agent-token') && !token) continue
    out.push(flag)
    if (value !== undefined) out.push(value)
  }
  return [...out, ...extra]
}

export async function startAgentProcess(opts: AgentProcessOptions = {}): Promise<AgentProcess> {
  const bundle = opts.bundle ?? AGENT_BUNDLE
  if (!existsSync(bundle)) throw new Error(`agent bundle ${bundle} not found: run \`npm run build\` first`)
  const standalone = opts.standalone !== false
  const token = opts.token ?? (standalone ? randomBytes(32).toString('base64url') : '')
  const args = buildArgs(opts, token)

  installExitHook()
  const argv = [...(opts.wrap ?? []), process.execPath, bundle, ...args]
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: REPO_ROOT,
    env: {...process.env, ...opts.env},
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  live.add(child)
  if (child.pid === undefined) {
    live.delete(child)
    await new Promise((r) => child.once('error', r))
    throw new Error(`could not start ${process.execPath} ${bundle}`)
  }
  const pid = child.pid

  let log = ''
  let exit: {code: number | null; signal: NodeJS.Signals | null} | null = null
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = {code, signal}
      live.delete(child)
      resolve()
    })
  })
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const append = (chunk: Buffer) => {
    log += chunk.toString('utf8')
    if (log.length > MAX_LOG_CHARS) log = log.slice(log.length - MAX_LOG_CHARS)
  }

  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exit) return
      try {
        process.kill(pid, 'SIGTERM')
      } catch {
        // already gone
      }
      const killer = setTimeout(() => {
        try {
          if (!exit) process.kill(pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }, 5000)
      await exited
      clearTimeout(killer)
    })()
    return stopping
  }

  const tail = (n = 40) => log.trimEnd().split('\n').slice(-n).join('\n')
  const timeoutMs = opts.startTimeoutMs ?? 30_000
  const started = Date.now()

  const listening = await new Promise<{port: number; tls: boolean; host: string}>((resolve, reject) => {
    let pending = ''
    let done = false
    const finish = (err: Error | null, value?: {port: number; tls: boolean; host: string}) => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (err) reject(err)
      else resolve(value!)
    }
    const timer = setTimeout(
      () => finish(new Error(`agent (pid ${pid}) did not report "agent API listening" within ${timeoutMs} ms; log tail:\n${tail()}`)),
      timeoutMs,
    )
    child.stdout!.on('data', append)
    child.stderr!.on('data', (chunk: Buffer) => {
      append(chunk)
      if (done) return
      pending += chunk.toString('utf8')
      let nl: number
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl)
        pending = pending.slice(nl + 1)
        if (!line.includes('agent API listening')) continue
        try {
          const rec = JSON.parse(line) as {msg?: string; port?: number; tls?: boolean; host?: string}
          if (rec.msg === 'agent API listening' && typeof rec.port === 'number') {
            finish(null, {port: rec.port, tls: Boolean(rec.tls), host: String(rec.host ?? '127.0.0.1')})
            return
          }
        } catch {
          // not a JSON log line
        }
      }
    })
    void exited
      // 'exit' may come before the last stderr bytes: give the pipes a moment to drain
      .then(() => Promise.race([closed, new Promise((r) => setTimeout(r, 250))]))
      .then(() =>
        finish(new Error(`agent (pid ${pid}) exited (${JSON.stringify(exit)}) before listening, after ${Date.now() - started} ms; log tail:\n${tail()}`)),
      )
  }).catch(async (err: unknown) => {
    await stop()
    throw err
  })

  // Tests talk to loopback only: a wildcard or loopback listen address is reached via 127.0.0.1.
  const host = listening.host === '::1' ? '[::1]' : '127.0.0.1'
  return {
    url: `${listening.tls ? 'https' : 'http'}://${host}:${listening.port}`,
    port: listening.port,
    pid,
    token,
    logs: () => log,
    exitStatus: () => exit,
    stop,
  }
}

/** Resident set size of a process in kB (VmRSS from /proc/<pid>/status), or NaN. */
export function rssKb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : NaN
  } catch {
    return NaN
  }
}

export interface RawResponse {
  status: number
  headers: http.IncomingHttpHeaders
  text: string
  /** Parsed JSON body, or undefined when the body is not JSON. */
  json: any
  ms: number
}

/**
 * One HTTP request with node:http to 127.0.0.1: no keep-alive agent, no redirects followed, headers
 * exactly as given (plus what node adds: Host, and Content-Length when `body` is given unless
 * `chunked`). Never throws on an HTTP status.
 */
export function agentRequest(
  baseUrl: string,
  opts: {method?: string; path: string; headers?: Record<string, string>; body?: string | Buffer; chunked?: boolean; timeoutMs?: number},
): Promise<RawResponse> {
  const base = new URL(baseUrl)
  if (base.hostname !== '127.0.0.1' && base.hostname !== '[::1]' && base.hostname !== 'localhost') {
    throw new Error(`refusing to send test traffic to a non-loopback host: ${baseUrl}`)
  }
  const headers: Record<string, string> = {...opts.headers}
  const body = opts.body === undefined ? undefined : Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(opts.body)
  if (body && !opts.chunked && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-length')) {
    headers['Content-Length'] = String(body.length)
  }
  const started = Date.now()
  return new Promise((resolve, reject) => {
    const req = http.request(
      {host: base.hostname.replace(/^\[|\]$/g, ''), port: Number(base.port), method: opts.method ?? 'GET', path: opts.path, headers, agent: false},
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          clearTimeout(timer)
          const text = Buffer.concat(chunks).toString('utf8')
          let json: unknown
          try {
            json = text ? JSON.parse(text) : undefined
          } catch {
            json = undefined
          }
          resolve({status: res.statusCode ?? 0, headers: res.headers, text, json, ms: Date.now() - started})
        })
      },
    )
    const timer = setTimeout(
      () => req.destroy(new Error(`request ${opts.method ?? 'GET'} ${opts.path} timed out after ${opts.timeoutMs ?? 30_000} ms`)),
      opts.timeoutMs ?? 30_000,
    )
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    req.end(body)
  })
}
