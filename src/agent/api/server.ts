/**
 * The agent's REST API, answering exactly as IPA's werkzeug app does (routes, redirects,
 * status codes, `{"faultcode", "faultstring"}` error bodies), on node:http/https.
 */
import {timingSafeEqual} from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import type {AddressInfo} from 'node:net'
import type {CommandProcessor, CommandResult} from '../commands.js'
import {RESTError} from '../errors.js'
import type {Logger} from '../log.js'

/** Largest request body accepted (an inline config drive may be 64 MiB before base64). */
export const MAX_BODY_BYTES = 128 * 1024 * 1024

/** werkzeug's reason phrases where node's differ. */
const WERKZEUG_REASONS: Record<number, string> = {413: 'Request Entity Too Large'}

const reason = (status: number): string => WERKZEUG_REASONS[status] ?? http.STATUS_CODES[status] ?? 'Error'

/**
 * Deepest JSON nesting accepted in a command body (Python's json, hence IPA, stops near 1000).
 * A body of nothing but '[' costs V8 ~300 bytes per level: without this bound a 2 MiB body took
 * 0.3 s and 340 MB to parse, and a 128 MiB one would exhaust the heap and kill the agent —
 * before the token is even checked.
 */
const MAX_JSON_DEPTH = 1000

const NOT_FOUND_TEXT =
  'The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.'

export interface ApiOptions {
  processor: CommandProcessor<unknown>
  log: Logger
  version: string
  startedAt: number
  /** The token commands must carry; undefined = none yet (every POST is refused). */
  token: () => string | undefined
  tls?: {cert: string | Buffer; key: string | Buffer; minVersion: 'TLSv1.2' | 'TLSv1.3'; ciphers?: string}
}

/** An HTTP error answered in werkzeug's words ("<code> <reason>: <description>"). */
class HttpError extends Error {
  constructor(
    readonly status: number,
    description: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(`${status} ${reason(status)}: ${description}`)
  }
}

type Handler = (req: http.IncomingMessage, url: URL, body: Buffer) => Promise<{status: number; body: unknown}>

export class AgentApi {
  private server?: http.Server
  private readonly sockets = new Set<import('node:net').Socket>()

  constructor(private readonly opts: ApiOptions) {}

  /** Start listening; resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => void this.handle(req, res)
    const server = this.opts.tls
      ? https.createServer(
          {cert: this.opts.tls.cert, key: this.opts.tls.key, minVersion: this.opts.tls.minVersion, ciphers: this.opts.tls.ciphers},
          handler,
        )
      : http.createServer(handler)
    // An Expect other than 100-continue is ignored, as cheroot does (node would answer a bare,
    // non-JSON 417 by itself).
    server.on('checkExpectation', handler)
    server.headersTimeout = 60_000
    server.requestTimeout = 0 // ?wait=true may legitimately take long
    server.keepAliveTimeout = 5_000
    server.on('connection', (s) => {
      this.sockets.add(s)
      s.on('close', () => this.sockets.delete(s))
    })
    server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      // Unparseable requests get a JSON fault too, but (as node's own handler) only when no
      // response on this socket has started, so a pipelined answer is never corrupted.
      const inFlight = (socket as {_httpMessage?: http.ServerResponse | null})._httpMessage
      if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
        socket.destroy()
        return
      }
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
      const text = JSON.stringify({faultcode: 'Client', faultstring: `${status} ${reason(status)}: The server could not understand the request.`})
      socket.end(
        `HTTP/1.1 ${status} ${reason(status)}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
        () => socket.destroy(),
      )
    })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      // '::' may be unavailable (no IPv6): fall back to 0.0.0.0 as IPA does.
      server.listen({host, port, ipv6Only: false}, () => {
        server.off('error', reject)
        resolve()
      })
    }).catch(async (err: NodeJS.ErrnoException) => {
      if (host !== '::' || (err.code !== 'EAFNOSUPPORT' && err.code !== 'EADDRNOTAVAIL')) throw err
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen({host: '0.0.0.0', port}, resolve)
      })
    })
    return (server.address() as AddressInfo).port
  }

  async close(): Promise<void> {
    const server = this.server
    if (!server) return
    this.server = undefined
    await new Promise<void>((resolve) => {
      server.close(() => resolve())
      for (const s of this.sockets) s.destroy()
    })
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now()
    let status = 500
    try {
      const proto = this.opts.tls ? 'https' : 'http'
      const host = req.headers.host ?? 'localhost'
      let url: URL
      try {
        const base = new URL(`${proto}://${host}`)
        const target = req.url ?? '/'
        // An origin-form target is a path even when it starts with '//': resolved against a base,
        // '//evil.example/v1' would name another host (an open redirect, or a command run on '/v1').
        url = target.startsWith('/') ? new URL(base.origin + target) : new URL(target, base)
      } catch {
        url = new URL(`${proto}://localhost/`)
        throw new HttpError(400, 'The browser (or proxy) sent a request that this server could not understand.')
      }
      const redirect = canonicalPath(url.pathname)
      // As werkzeug: redirect only to a path that routes; anything else is a plain 404.
      if (redirect !== url.pathname && this.route(redirect).handler) {
        status = 308
        const location = `${url.origin}${redirect}${url.search}`
        send(res, 308, redirectPage(location), {'Content-Type': 'text/html; charset=utf-8', Location: location}, req.method === 'HEAD')
        return
      }
      const {handler, allowed} = this.route(url.pathname)
      if (!handler) throw new HttpError(404, NOT_FOUND_TEXT)
      const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET')
      const fn = handler[method]
      if (!fn) throw new HttpError(405, 'The method is not allowed for the requested URL.', {Allow: [...allowed, 'HEAD'].sort().join(', ')})
      const body = method === 'POST' ? await readBody(req) : Buffer.alloc(0)
      const out = await fn(req, url, body)
      status = out.status
      sendJson(res, out.status, out.body, req.method === 'HEAD')
    } catch (err) {
      const {code, body, headers} = errorBody(err)
      status = code
      if (code >= 500) this.opts.log.error('API request failed', {method: req.method, path: req.url?.split('?')[0], err})
      sendJson(res, code, body, req.method === 'HEAD', headers)
    } finally {
      this.opts.log.debug('API request', {method: req.method, path: req.url?.split('?')[0], status, ms: Date.now() - started})
    }
  }

  private route(path: string): {handler?: Partial<Record<string, Handler>>; allowed: string[]} {
    const h = (handlers: Partial<Record<string, Handler>>) => ({handler: handlers, allowed: Object.keys(handlers)})
    if (path === '/') return h({GET: async (_r, url) => ({status: 200, body: this.rootDoc(url)})})
    if (path === '/v1/') return h({GET: async (_r, url) => ({status: 200, body: this.v1Doc(url)})})
    if (path === '/v1/status' || path === '/status') {
      return h({GET: async () => ({status: 200, body: {started_at: this.opts.startedAt, version: this.opts.version}})})
    }
    if (path === '/v1/commands/' || path === '/commands/') {
      return h({
        GET: async () => ({status: 200, body: {commands: this.opts.processor.list()}}),
        POST: (req, url, body) => this.runCommand(req, url, body),
      })
    }
    const m = /^\/(?:v1\/)?commands\/([^/]+)$/.exec(path)
    if (m) {
      return h({
        GET: async (_r, url) => {
          const result = this.opts.processor.get(decodePathSegment(m[1]!))
          if (isTrue(url.searchParams.get('wait'))) await result.done
          return {status: 200, body: result}
        },
      })
    }
    return {allowed: []}
  }

  private async runCommand(_req: http.IncomingMessage, url: URL, raw: Buffer): Promise<{status: number; body: CommandResult}> {
    let body: unknown
    try {
      if (nestingExceeds(raw, MAX_JSON_DEPTH)) throw new Error(`nesting deeper than ${MAX_JSON_DEPTH} levels`)
      body = JSON.parse(raw.toString('utf8'))
    } catch (err) {
      const detail = raw.length === 0 ? 'Expecting value: line 1 column 1 (char 0)' : (err as Error).message
      throw new HttpError(400, `Failed to decode JSON object: ${detail}`)
    }
    if (
      body === null ||
      typeof body !== 'object' ||
      Array.isArray(body) ||
      typeof (body as Record<string, unknown>).name !== 'string' ||
      !isPlainObject((body as Record<string, unknown>).params)
    ) {
      throw new HttpError(400, 'Missing or invalid name or params')
    }
    if (!this.tokenValid(url.searchParams.get('agent_token'))) throw new HttpError(401, 'Token invalid.')
    const {name, params} = body as {name: string; params: Record<string, unknown>}
    const result = await this.opts.processor.execute(name, params)
    if (isTrue(url.searchParams.get('wait'))) await result.done
    return {status: 200, body: result}
  }

  private tokenValid(given: string | null): boolean {
    const expected = this.opts.token()
    if (!given || !expected) return false
    const a = Buffer.from(given)
    const b = Buffer.from(expected)
    return a.length === b.length && timingSafeEqual(a, b)
  }

  private rootDoc(url: URL): unknown {
    const v1 = {
      id: 'v1',
      links: [
        {href: `${url.origin}/v1/`, rel: 'self'},
        {href: 'https://docs.openstack.org/ironic-python-agent', rel: 'describedby', type: 'text/html'},
      ],
    }
    return {
      name: 'OpenStack Ironic Python Agent API',
      description: 'Ironic Python Agent is a provisioning agent for OpenStack Ironic',
      versions: [v1],
      default_version: v1,
    }
  }

  private v1Doc(url: URL): unknown {
    const links = (what: string) => [
      {href: `${url.origin}/v1/${what}`, rel: 'self'},
      {href: `${url.origin}/${what}`, rel: 'bookmark'},
    ]
    return {
      commands: links('commands'),
      status: links('status'),
      media_types: [{base: 'application/json', type: 'application/vnd.openstack.ironic-python-agent.v1+json'}],
      id: 'v1',
      links: [
        {href: `${url.origin}/v1/`, rel: 'self'},
        {href: 'https://docs.openstack.org/ironic-python-agent', rel: 'describedby', type: 'text/html'},
      ],
    }
  }
}

/** werkzeug's strict-slash and merge-slash redirects. */
function canonicalPath(path: string): string {
  let p = path.replace(/\/{2,}/g, '/')
  if (p === '/v1' || p === '/v1/commands' || p === '/commands') p += '/'
  return p
}

/**
 * Percent-decode a path segment as werkzeug does: invalid UTF-8 becomes U+FFFD instead of an
 * error (decodeURIComponent throws URIError on '%E0%A4%A', which answered 500).
 */
function decodePathSegment(s: string): string {
  // URL.pathname is ASCII (everything else is percent-encoded), so latin1 maps it to bytes 1:1.
  return Buffer.from(s.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8')
}

/** Does the JSON text nest arrays/objects deeper than `limit`? (A linear byte scan; strings skipped.) */
function nestingExceeds(raw: Buffer, limit: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]
    if (inString) {
      if (c === 0x5c) i++ // backslash: skip the escaped byte
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true
    } else if (c === 0x5d || c === 0x7d) {
      depth--
    }
  }
  return false
}

function isTrue(v: string | null): boolean {
  return v !== null && v.toLowerCase() === 'true'
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > MAX_BODY_BYTES) {
    req.resume()
    throw new HttpError(413, `The data value transmitted exceeds the capacity limit (${MAX_BODY_BYTES} bytes).`)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY_BYTES) {
      req.resume()
      throw new HttpError(413, `The data value transmitted exceeds the capacity limit (${MAX_BODY_BYTES} bytes).`)
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

function errorBody(err: unknown): {code: number; body: {faultcode: string; faultstring: string}; headers: Record<string, string>} {
  let code = 500
  let faultstring: string
  let headers: Record<string, string> = {}
  if (err instanceof HttpError) {
    code = err.status
    faultstring = err.message
    headers = err.headers
  } else if (err instanceof RESTError) {
    code = err.code
    faultstring = err.message
  } else {
    faultstring = err instanceof Error ? err.message : String(err)
  }
  return {code, body: {faultcode: code >= 500 ? 'Server' : 'Client', faultstring}, headers}
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headOnly: boolean, headers: Record<string, string> = {}): void {
  let text: string
  try {
    text = JSON.stringify(body)
  } catch (err) {
    status = 500
    text = JSON.stringify({faultcode: 'Server', faultstring: `response could not be serialised: ${(err as Error).message}`})
  }
  send(res, status, text, {'Content-Type': 'application/json', ...headers}, headOnly)
}

function send(res: http.ServerResponse, status: number, text: string, headers: Record<string, string>, headOnly: boolean): void {
  if (res.headersSent) return
  const data = Buffer.from(text)
  res.writeHead(status, {...headers, 'Content-Length': String(data.length)})
  res.end(headOnly ? undefined : data)
}

function redirectPage(location: string): string {
  const esc = location.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
  return (
    '<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n' +
    `<p>You should be redirected automatically to the target URL: <a href="${esc}">${esc}</a>. If not, click the link.\n`
  )
}
