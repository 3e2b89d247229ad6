/**
 * The agent's side of Ironic's ramdisk API: version discovery, lookup, heartbeat, inspection.
 * Field names, headers and version gating follow IPA (see docs/agent.md).
 */
import {readFileSync} from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import type {AgentConfig} from './config.js'
import {HeartbeatConflictError, HeartbeatConnectionError, HeartbeatError, LookupAgentIPError} from './errors.js'
import type {Logger} from './log.js'

export type ApiVersion = [number, number]

export const LOOKUP_MAX_VERSION: ApiVersion = [1, 62]
export const HEARTBEAT_MAX_VERSION: ApiVersion = [1, 68]
const AGENT_VERSION_MIN: ApiVersion = [1, 36]
const AGENT_TOKEN_MIN: ApiVersion = [1, 62]
export const AGENT_VERIFY_CA_MIN: ApiVersion = [1, 68]
const FALLBACK_VERSION: ApiVersion = [1, 31]
/** Ironic's built-in inspection answers lookup-style (node, config with a fresh agent_token) from 1.84. */
export const CONTINUE_INSPECTION_VERSION: ApiVersion = [1, 84]

export function cmpVersion(a: ApiVersion, b: ApiVersion): number {
  return a[0] - b[0] || a[1] - b[1]
}
const minVersion = (a: ApiVersion, b: ApiVersion): ApiVersion => (cmpVersion(a, b) <= 0 ? a : b)
const fmt = (v: ApiVersion) => `${v[0]}.${v[1]}`

export function parseVersion(s: string): ApiVersion | undefined {
  const m = /^(\d+)\.(\d+)$/.exec(s.trim())
  return m ? [Number(m[1]), Number(m[2])] : undefined
}

export interface HttpResponse {
  status: number
  body: string
  json(): unknown
}

export class ConnectionError extends Error {}

/** A small HTTP(S) client with the agent's TLS settings (CA, client cert, insecure). */
export class HttpClient {
  private readonly tls: https.AgentOptions
  constructor(private readonly config: AgentConfig) {
    this.tls = {
      rejectUnauthorized: !config.insecure,
      ca: config.cafile ? readFileSync(config.cafile) : undefined,
      cert: config.certfile ? readFileSync(config.certfile) : undefined,
      key: config.keyfile ? readFileSync(config.keyfile) : undefined,
    }
  }

  request(method: string, url: string, opts: {headers?: Record<string, string>; body?: string; timeoutMs?: number} = {}): Promise<HttpResponse> {
    const u = new URL(url)
    const mod = u.protocol === 'https:' ? https : http
    const headers: Record<string, string> = {Accept: 'application/json', ...opts.headers}
    if (opts.body !== undefined) {
      headers['Content-Type'] ??= 'application/json'
      headers['Content-Length'] = String(Buffer.byteLength(opts.body))
    }
    if (this.config.globalRequestId) headers['X-OpenStack-Request-ID'] = this.config.globalRequestId
    const timeoutMs = opts.timeoutMs ?? this.config.httpRequestTimeout * 1000
    return new Promise((resolve, reject) => {
      const req = mod.request(u, {method, headers, ...(u.protocol === 'https:' ? this.tls : {}), timeout: timeoutMs}, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', (err) => reject(new ConnectionError(err.message)))
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8')
          resolve({
            status: res.statusCode ?? 0,
            body,
            json: () => JSON.parse(body),
          })
        })
      })
      req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)))
      req.on('error', (err) => reject(new ConnectionError(`${method} ${u.origin}${u.pathname}: ${err.message}`)))
      req.end(opts.body)
    })
  }
}

export interface LookupResult {
  node: Record<string, unknown> & {uuid: string}
  config: Record<string, unknown>
}

export type LookupOutcome = {kind: 'ok'; result: LookupResult} | {kind: 'retry'; reason: string; conflict?: boolean}

/** Talks to one of the configured Ironic API URLs (rotating to the one that answers). */
export class IronicClient {
  readonly http: HttpClient
  private urls: string[]
  private version?: ApiVersion

  constructor(
    private readonly config: AgentConfig,
    private readonly log: Logger,
  ) {
    this.http = new HttpClient(config)
    this.urls = config.apiUrl.map((u) => u.replace(/\/+$/, ''))
  }

  get apiUrl(): string {
    return this.urls[0]!
  }

  /** Send to each API URL in turn until one answers (any HTTP status); the answering one moves first. */
  private async call(method: string, path: string, opts: {headers?: Record<string, string>; body?: string} = {}): Promise<HttpResponse> {
    let lastErr: unknown
    for (let i = 0; i < this.urls.length; i++) {
      const base = this.urls[i]!
      try {
        const res = await this.http.request(method, base + path, opts)
        if (i > 0) this.urls = [base, ...this.urls.filter((u) => u !== base)]
        return res
      } catch (err) {
        lastErr = err
        this.log.debug('Ironic API not reachable', {url: base, err})
      }
    }
    throw lastErr instanceof Error ? lastErr : new ConnectionError(String(lastErr))
  }

  /** The server's maximum API version (GET /), or ipa-ironic-api-version, or 1.31 when unknown. */
  async apiVersion(): Promise<ApiVersion> {
    if (this.version) return this.version
    const forced = this.config.ironicApiVersion ? parseVersion(this.config.ironicApiVersion) : undefined
    if (forced) return (this.version = forced)
    try {
      const res = await this.call('GET', '/')
      const v = (res.json() as {default_version?: {version?: string}}).default_version?.version
      const parsed = v ? parseVersion(v) : undefined
      if (parsed) return (this.version = parsed)
      this.log.warn('Ironic did not report an API version, assuming 1.31', {status: res.status})
    } catch (err) {
      this.log.warn('Ironic API version discovery failed, assuming 1.31 for now', {err})
      return FALLBACK_VERSION // not cached: try again next time
    }
    return (this.version = FALLBACK_VERSION)
  }

  /** One lookup attempt. */
  async lookup(macs: string[], nodeUuid?: string): Promise<LookupOutcome> {
    const version = minVersion(await this.apiVersion(), LOOKUP_MAX_VERSION)
    const q = new URLSearchParams()
    q.set('addresses', macs.join(','))
    if (nodeUuid) q.set('node_uuid', nodeUuid)
    let res: HttpResponse
    try {
      res = await this.call('GET', `/v1/lookup?${q.toString().replace(/%2C/gi, ',').replace(/%3A/gi, ':')}`, {
        headers: {'X-OpenStack-Ironic-API-Version': fmt(version)},
      })
    } catch (err) {
      return {kind: 'retry', reason: (err as Error).message}
    }
    if (res.status === 409) return {kind: 'retry', reason: 'node is locked (409)', conflict: true}
    if (res.status !== 200) return {kind: 'retry', reason: `lookup answered ${res.status}: ${errorText(res)}`}
    let body: unknown
    try {
      body = res.json()
    } catch {
      return {kind: 'retry', reason: 'lookup answer is not JSON'}
    }
    const result = parseLookupBody(body)
    if (!result) return {kind: 'retry', reason: 'lookup answer has no node.uuid'}
    return {kind: 'ok', result}
  }

  /** POST /v1/heartbeat/{uuid}; resolves on 202. */
  async heartbeat(uuid: string, fields: {callbackUrl: string; token?: string; agentVersion: string; verifyCa?: string}): Promise<void> {
    const server = await this.apiVersion()
    const version = minVersion(server, HEARTBEAT_MAX_VERSION)
    const body: Record<string, unknown> = {callback_url: fields.callbackUrl}
    if (cmpVersion(server, AGENT_TOKEN_MIN) >= 0 && fields.token) body.agent_token = fields.token
    if (cmpVersion(server, AGENT_VERSION_MIN) >= 0) body.agent_version = fields.agentVersion
    if (cmpVersion(server, AGENT_VERIFY_CA_MIN) >= 0 && fields.verifyCa) body.agent_verify_ca = fields.verifyCa
    let res: HttpResponse
    try {
      res = await this.call('POST', `/v1/heartbeat/${encodeURIComponent(uuid)}`, {
        headers: {'X-OpenStack-Ironic-API-Version': fmt(version)},
        body: JSON.stringify(body),
      })
    } catch (err) {
      throw new HeartbeatConnectionError((err as Error).message)
    }
    if (res.status === 202 || res.status === 200) return
    const text = errorText(res)
    if (res.status === 409) throw new HeartbeatConflictError(`heartbeat conflict: ${text}`)
    throw new HeartbeatError(`Error heartbeating to agent API: status ${res.status}: ${text}`)
  }

  /**
   * POST inspection data to an inspection URL. ironic-inspector's /v1/continue gets no version
   * header (as IPA). Ironic's own /v1/continue_inspection (built-in inspection, Ironic ≥ 2023.2)
   * gets API 1.84, where it answers like a lookup (node + config with a fresh agent token) instead
   * of the inspector-compatible {"uuid"} of API 1.1 that IPA asks for by sending no header; that
   * endpoint and 1.84 came in the same release, so every Ironic serving it accepts 1.84.
   */
  async postInspection(url: string, data: unknown): Promise<HttpResponse> {
    const headers: Record<string, string> = isContinueInspectionUrl(url) ? {'X-OpenStack-Ironic-API-Version': fmt(CONTINUE_INSPECTION_VERSION)} : {}
    return this.http.request('POST', url, {headers, body: JSON.stringify(data)})
  }

  /**
   * The local address used to reach the Ironic API (IPA asks `ip route get`; connecting a TCP
   * socket gives the same source address without a tool).
   */
  async findAdvertiseAddress(attempts: number, sleepSeconds: number): Promise<string> {
    for (let attempt = 1; attempt <= Math.max(1, attempts); attempt++) {
      for (const base of this.urls) {
        const u = new URL(base)
        const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80))
        try {
          const addr = await new Promise<string>((resolve, reject) => {
            const sock = net.connect({host: u.hostname.replace(/^\[|\]$/g, ''), port, timeout: 10_000})
            sock.once('connect', () => {
              const a = sock.localAddress ?? ''
              sock.destroy()
              resolve(a.replace(/^::ffff:/, ''))
            })
            sock.once('timeout', () => sock.destroy(new Error('timeout')))
            sock.once('error', reject)
          })
          if (addr && !addr.startsWith('fe80:') && !addr.startsWith('169.254.')) return addr
        } catch (err) {
          this.log.debug('advertise address probe failed', {url: base, err})
        }
      }
      if (attempt < attempts) await sleep(sleepSeconds * 1000)
    }
    throw new LookupAgentIPError(`Cannot find a local address to advertise: none of ${this.urls.join(', ')} is reachable`)
  }
}

/** Ironic's built-in inspection endpoint (…/v1/continue_inspection), not ironic-inspector's /v1/continue. */
export function isContinueInspectionUrl(url: string): boolean {
  try {
    return /\/v1\/continue_inspection\/?$/.test(new URL(url).pathname)
  } catch {
    return false
  }
}

/**
 * A lookup answer's shape ({node: {uuid}, config}), or undefined; the old top-level
 * heartbeat_timeout moves into config.
 */
export function parseLookupBody(body: unknown): LookupResult | undefined {
  if (!body || typeof body !== 'object') return undefined
  const b = body as Record<string, unknown>
  const node = b.node as LookupResult['node'] | undefined
  if (!node || typeof node !== 'object' || typeof node.uuid !== 'string') return undefined
  const config = {...((b.config as Record<string, unknown>) ?? {})}
  if (config.heartbeat_timeout === undefined && b.heartbeat_timeout !== undefined) config.heartbeat_timeout = b.heartbeat_timeout
  return {node, config}
}

/** Ironic's error body is {"error_message": "<JSON string with faultstring>"}. */
export function errorText(res: HttpResponse): string {
  try {
    const body = res.json() as Record<string, unknown>
    let inner: unknown = body.error_message ?? body
    if (typeof inner === 'string') {
      try {
        inner = JSON.parse(inner)
      } catch {
        return inner as string
      }
    }
    const fault = (inner as Record<string, unknown>)?.faultstring
    if (typeof fault === 'string') return fault
    return JSON.stringify(inner).slice(0, 500)
  } catch {
    return res.body.slice(0, 500)
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
