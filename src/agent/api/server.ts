/**
 * The agent's REST API, answering exactly as IPA's werkzeug app does (routes, redirects,
 * status codes, `{"faultcode", "faultstring"}` error bodies), on node:http/https.
 */
import {timingSafeEqual} from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import type {AddressInfo, Socket} from 'node:net'
import type {CommandProcessor, CommandResult} from '../commands.js'
import {RESTError} from '../errors.js'
import type {Logger} from '../log.js'

/**
 * Default bound on a command body (ipa-api-max-body-size). Ironic's write_image carries an inline
 * config drive (gzip + base64) up to three times: node.instance_info, image_info and the step args.
 */
export const MAX_BODY_BYTES = 128 * 1024 * 1024

/**
 * Bytes of a body read for a POST with a wrong or missing token. The token is checked first, but
 * IPA 9.4 answers a malformed small body with 400 even when the token is wrong: up to this many
 * bytes are read so that stays so; past it the answer is 401 at once and the body is never kept.
 */
export const UNAUTHENTICATED_BODY_BYTES = 64 * 1024

/**
 * After an early answer (401, 413) at most this much more of the body is read and discarded before
 * the connection is closed: enough that an ordinary client (node, python-requests) which goes on
 * sending a 10 MB body still reads the answer instead of a reset, far from "draining gigabytes".
 */
export const LINGER_BYTES = 16 * 1024 * 1024

/** Default for ipa-api-client-timeout: a request's headers, or a pause in its body, may take this long (cheroot's socket timeout in IPA is 10 s). */
export const CLIENT_TIMEOUT_MS = 10_000

/** A whole request (headers and body, not the answer) must arrive within this (node's default). */
export const REQUEST_TIMEOUT_MS = 300_000

/** Open connections at most; at the limit a new one sheds the least useful (AgentApi.shedCandidate). */
export const MAX_CONNECTIONS = 128

/** A connection idle or stalled this long without a complete request is the first to be shed. */
export const SHED_GRACE_MS = 2000

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

const TIMEOUT_TEXT = "The server closed the network connection because the browser didn't finish the request within the specified time."

const NOT_FOUND_TEXT = 'The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.'

export interface ApiOptions {
  processor: CommandProcessor<unknown>
  log: Logger
  version: string
  startedAt: number
  /** The token commands must carry; undefined = none yet (every POST is refused). */
  token: () => string | undefined
  tls?: {cert: string | Buffer; key: string | Buffer; minVersion: 'TLSv1.2' | 'TLSv1.3'; ciphers?: string}
  /** Request limits (defaults: the constants above). */
  limits?: Partial<ApiLimits>
}

export interface ApiLimits {
  maxBodyBytes: number
  clientTimeoutMs: number
  maxConnections: number
}

/** What the connection guard knows about one TCP connection. */
interface Conn {
  socket: Socket
  key: string
  /** When it connected, or when its last answer finished. */
  since: number
  /** Requests answered on it. */
  served: number
  /** Requests whose answer has not finished yet. */
  active: number
  /** A command body being read, with the time its last bytes came. */
  reading?: {lastData: number}
  /** An early answer was sent and the rest of the body is being discarded. */
  lingering: boolean
  /** Since when a GET ?wait=true (no token needed) is blocked on a command here. */
  waitingSince?: number
}

/** The client went away before its body ended. */
class ClientGone extends Error {}

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

/** The client stopped sending its body for longer than the client timeout. */
class BodyStalled extends HttpError {
  constructor() {
    super(408, TIMEOUT_TEXT, {Connection: 'close'})
  }
}

type Handler = (req: http.IncomingMessage, url: URL, body: Buffer) => Promise<{status: number; body: unknown}>

export class AgentApi {
  private server?: http.Server
  private readonly limits: ApiLimits
  /** Every open TCP connection, by its raw socket and by "<address>|<port>" (a TLS socket's peer is its raw socket's). */
  private readonly conns = new Map<Socket, Conn>()
  private readonly connsByKey = new Map<string, Conn>()
  /** TLS sockets whose handshake completed (a clientError on any other gets no HTTP answer). */
  private readonly secured = new WeakSet<Socket>()
  private shedCount = 0
  private lastShedLog = 0

  constructor(private readonly opts: ApiOptions) {
    this.limits = {
      maxBodyBytes: opts.limits?.maxBodyBytes ?? MAX_BODY_BYTES,
      clientTimeoutMs: Math.max(1, Math.round(opts.limits?.clientTimeoutMs ?? CLIENT_TIMEOUT_MS)),
      maxConnections: opts.limits?.maxConnections ?? MAX_CONNECTIONS,
    }
  }

  /** Start listening; resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => void this.handle(req, res)
    const timeout = this.limits.clientTimeoutMs
    const httpOptions: http.ServerOptions = {
      // a request's headers must arrive within the client timeout, from the connection (or from the
      // first byte of a later request on a kept-alive one: between requests keepAliveTimeout
      // applies); node checks once per connectionsCheckingInterval
      headersTimeout: timeout,
      // the whole request (headers + body; not the time the answer takes, e.g. ?wait=true)
      requestTimeout: Math.max(REQUEST_TIMEOUT_MS, timeout),
      keepAliveTimeout: 5_000,
      connectionsCheckingInterval: Math.min(1000, timeout),
    }
    const server = this.opts.tls
      ? https.createServer(
          {
            ...httpOptions,
            cert: this.opts.tls.cert,
            key: this.opts.tls.key,
            minVersion: this.opts.tls.minVersion,
            ciphers: this.opts.tls.ciphers,
            handshakeTimeout: timeout,
          },
          handler,
        )
      : http.createServer(httpOptions, handler)
    // An Expect other than 100-continue is ignored, as cheroot does (node would answer a bare,
    // non-JSON 417 by itself).
    server.on('checkExpectation', handler)
    server.on('connection', (s: Socket) => this.admit(s))
    server.on('secureConnection', (s: Socket) => this.secured.add(s))
    server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      // Unparseable requests get a JSON fault too, but (as node's own handler) only when no
      // response on this socket has started, so a pipelined answer is never corrupted.
      const inFlight = (socket as {_httpMessage?: http.ServerResponse | null})._httpMessage
      if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent || (this.opts.tls && !this.secured.has(socket as Socket))) {
        socket.destroy()
        return
      }
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
      const text = JSON.stringify({
        faultcode: 'Client',
        faultstring: `${status} ${reason(status)}: ${status === 408 ? TIMEOUT_TEXT : 'The server could not understand the request.'}`,
      })
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
      for (const c of this.conns.values()) c.socket.destroy()
    })
  }

  /**
   * A new TCP connection. At the connection limit it takes the place of the least useful open
   * one (shed), so stalled or idle sockets can never lock Ironic out; only when every open
   * connection is busy with a request being answered is the new one refused.
   */
  private admit(socket: Socket): void {
    const now = Date.now()
    if (this.conns.size >= this.limits.maxConnections) {
      const victim = this.shedCandidate(now)
      this.shedCount++
      if (now - this.lastShedLog > 10_000) {
        this.lastShedLog = now
        this.opts.log.warn('agent API connection limit reached: shedding idle and stalled connections', {
          limit: this.limits.maxConnections,
          shed_so_far: this.shedCount,
          refused_new: !victim,
        })
      }
      if (!victim) {
        socket.destroy()
        return
      }
      this.drop(victim)
    }
    const conn: Conn = {socket, key: peerKey(socket), since: now, served: 0, active: 0, lingering: false}
    this.conns.set(socket, conn)
    this.connsByKey.set(conn.key, conn)
    socket.once('close', () => {
      this.conns.delete(socket)
      if (this.connsByKey.get(conn.key) === conn) this.connsByKey.delete(conn.key)
    })
  }

  /**
   * The connection to give up for a new one, best first: one discarding a body after an early
   * answer; an idle kept-alive one (oldest first); one without a complete request after
   * SHED_GRACE_MS (headers or TLS handshake stalled, or nothing sent), or whose body has not moved
   * for that long (least recently active first); then any other without a complete request (least
   * recently active first); then one blocked in a GET ?wait=true, which needs no token (oldest
   * first: Ironic polls instead). Never one whose request is otherwise being answered.
   */
  private shedCandidate(now: number): Conn | undefined {
    let best: Conn | undefined
    let bestRank = Infinity
    let bestAt = Infinity
    for (const c of this.conns.values()) {
      let rank: number
      let at: number
      if (c.lingering) [rank, at] = [0, c.since]
      else if (c.reading) [rank, at] = [now - c.reading.lastData >= SHED_GRACE_MS ? 2 : 3, c.reading.lastData]
      else if (c.active === 1 && c.waitingSince !== undefined) [rank, at] = [4, c.waitingSince]
      else if (c.active > 0) continue
      else if (c.served > 0) [rank, at] = [1, c.since]
      else [rank, at] = [now - c.since >= SHED_GRACE_MS ? 2 : 3, c.since]
      if (rank < bestRank || (rank === bestRank && at < bestAt)) [best, bestRank, bestAt] = [c, rank, at]
    }
    return best
  }

  private drop(conn: Conn): void {
    this.conns.delete(conn.socket)
    if (this.connsByKey.get(conn.key) === conn) this.connsByKey.delete(conn.key)
    conn.socket.destroy()
  }

  /** The tracked connection a request came on (a TLS socket is found by its peer address). */
  private connOf(socket: Socket): Conn {
    const found = this.conns.get(socket) ?? this.connsByKey.get(peerKey(socket))
    // (not tracked: a connection handed to the server some other way; track nothing, shed nothing)
    return found ?? {socket, key: '', since: Date.now(), served: 0, active: 0, lingering: false}
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now()
    let status = 500
    const conn = this.connOf(req.socket)
    conn.active++
    res.once('close', () => {
      conn.active--
      conn.served++
      conn.since = Date.now()
    })
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
      const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET')
      const {handler, allowed} = this.route(url.pathname)
      const fn = redirect === url.pathname ? handler?.[method] : undefined
      // Only a command POST reads its body; any other request's body is discarded, within bounds.
      const readsBody = method === 'POST' && fn !== undefined && isCommandsPath(url.pathname)
      if (!readsBody) this.linger(req, res, conn)
      // As werkzeug: redirect only to a path that routes; anything else is a plain 404.
      if (redirect !== url.pathname && this.route(redirect).handler) {
        status = 308
        const location = `${url.origin}${redirect}${url.search}`
        send(res, 308, redirectPage(location), {'Content-Type': 'text/html; charset=utf-8', Location: location}, req.method === 'HEAD')
        return
      }
      if (!handler) throw new HttpError(404, NOT_FOUND_TEXT)
      if (!fn) throw new HttpError(405, 'The method is not allowed for the requested URL.', {Allow: [...allowed, 'HEAD'].sort().join(', ')})
      const body = readsBody ? await this.readCommandBody(req, res, url, conn) : Buffer.alloc(0)
      const waits = method === 'GET' && isTrue(url.searchParams.get('wait'))
      if (waits) conn.waitingSince = Date.now()
      const out = await fn(req, url, body).finally(() => {
        if (waits) conn.waitingSince = undefined
      })
      status = out.status
      sendJson(res, out.status, out.body, req.method === 'HEAD')
    } catch (err) {
      if (err instanceof ClientGone) {
        status = 499
        req.socket.destroy()
        return
      }
      // (a body not read yet, e.g. after a target that does not parse, is discarded within bounds)
      if (!(err instanceof BodyStalled)) this.linger(req, res, conn)
      const {code, body, headers} = errorBody(err)
      status = code
      if (code >= 500) this.opts.log.error('API request failed', {method: req.method, path: req.url?.split('?')[0], err})
      sendJson(res, code, body, req.method === 'HEAD', headers)
      if (err instanceof BodyStalled) res.once('finish', () => destroyConn(req, conn))
    } finally {
      this.opts.log.debug('API request', {method: req.method, path: req.url?.split('?')[0], status, ms: Date.now() - started})
    }
  }

  /**
   * The body of a command POST. The token is checked before anything is read: with a wrong or
   * missing one at most UNAUTHENTICATED_BODY_BYTES are read (so a small malformed body still gets
   * IPA's 400), and a longer body is answered 401 at once. With the token the body may be up to
   * maxBodyBytes, enforced while it streams in. After an early answer the rest is discarded
   * (LINGER_BYTES at most) and the connection closed.
   */
  private async readCommandBody(req: http.IncomingMessage, res: http.ServerResponse, url: URL, conn: Conn): Promise<Buffer> {
    const tokenOk = this.tokenValid(url.searchParams.get('agent_token'))
    const limit = tokenOk ? this.limits.maxBodyBytes : UNAUTHENTICATED_BODY_BYTES
    const tooLarge = () =>
      new HttpError(
        413,
        `The data value transmitted exceeds the capacity limit (a command body may have ${this.limits.maxBodyBytes} bytes at most: ipa-api-max-body-size).`,
      )
    const declared = Number(req.headers['content-length'] ?? 0)
    if (tokenOk && declared > limit) {
      this.linger(req, res, conn)
      throw tooLarge()
    }
    const body = await this.readUpTo(req, limit, conn)
    if (!body) {
      this.linger(req, res, conn)
      throw tokenOk ? tooLarge() : new HttpError(401, 'Token invalid.')
    }
    return body
  }

  /**
   * Read a body of at most `limit` bytes: the body, or undefined (and the request paused) as soon
   * as more arrives. Rejects with BodyStalled when no byte comes for the client timeout, and with
   * ClientGone when the client goes away first.
   */
  private readUpTo(req: http.IncomingMessage, limit: number, conn: Conn): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = []
      let size = 0
      const reading = {lastData: Date.now()}
      conn.reading = reading
      const timer = setTimeout(() => done(() => reject(new BodyStalled())), this.limits.clientTimeoutMs)
      const done = (settle: () => void) => {
        clearTimeout(timer)
        req.off('data', onData).off('end', onEnd).off('close', onClose)
        if (conn.reading === reading) conn.reading = undefined
        settle()
      }
      const onData = (chunk: Buffer) => {
        size += chunk.length
        if (size > limit) {
          req.pause()
          done(() => resolve(undefined))
          return
        }
        chunks.push(chunk)
        reading.lastData = Date.now()
        timer.refresh()
      }
      const onEnd = () => done(() => resolve(Buffer.concat(chunks)))
      const onClose = () => done(() => reject(new ClientGone()))
      req.on('data', onData).on('end', onEnd).on('close', onClose)
    })
  }

  /**
   * Discard what is left of a request body without keeping it. An answer given meanwhile is
   * written at once but ended only when the body ends, so node does not close the connection
   * (a close with unread bytes is a reset, which can destroy the answer before the client reads
   * it). The connection is closed once LINGER_BYTES more have come, or the body stalls for the
   * client timeout; a body that ends within that leaves a kept-alive connection usable.
   */
  private linger(req: http.IncomingMessage, res: http.ServerResponse, conn: Conn): void {
    // (a request with neither Content-Length nor Transfer-Encoding has no body)
    const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
    if (!hasBody || req.complete || lingering.has(res)) return
    let discarded = 0
    let release!: () => void
    const state = {
      done: new Promise<void>((resolve) => (release = resolve)),
      answered: () => {
        conn.lingering = true
      },
    }
    lingering.set(res, state)
    const finish = (close: boolean) => {
      clearTimeout(timer)
      req.off('data', onData).off('end', onEnd).off('close', onClose)
      conn.lingering = false
      release()
      if (!close) return
      if (!res.headersSent || res.writableFinished) destroyConn(req, conn)
      else res.once('finish', () => destroyConn(req, conn))
    }
    const onData = (chunk: Buffer) => {
      discarded += chunk.length
      if (discarded > LINGER_BYTES) finish(true)
      else timer.refresh()
    }
    const onEnd = () => finish(false)
    const onClose = () => finish(true)
    const timer = setTimeout(() => finish(true), this.limits.clientTimeoutMs)
    req.on('data', onData).on('end', onEnd).on('close', onClose)
    req.resume()
  }

  private route(path: string): {handler?: Partial<Record<string, Handler>>; allowed: string[]} {
    const h = (handlers: Partial<Record<string, Handler>>) => ({handler: handlers, allowed: Object.keys(handlers)})
    if (path === '/') return h({GET: async (_r, url) => ({status: 200, body: this.rootDoc(url)})})
    if (path === '/v1/') return h({GET: async (_r, url) => ({status: 200, body: this.v1Doc(url)})})
    if (path === '/v1/status' || path === '/status') {
      return h({GET: async () => ({status: 200, body: {started_at: this.opts.startedAt, version: this.opts.version}})})
    }
    if (isCommandsPath(path)) {
      return h({
        GET: async () => ({status: 200, body: {commands: this.opts.processor.list()}}),
        POST: (_req, url, body) => this.runCommand(url, body),
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

  /** A command POST whose body was read in full (readCommandBody): checked as IPA 9.4 does, body first. */
  private async runCommand(url: URL, raw: Buffer): Promise<{status: number; body: CommandResult}> {
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
  return Buffer.from(
    s.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
    'latin1',
  ).toString('utf8')
}

/** Does the JSON text nest arrays/objects deeper than `limit`? (A linear byte scan; strings skipped.) */
function nestingExceeds(raw: Buffer, limit: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]
    if (inString) {
      if (c === 0x5c)
        i++ // backslash: skip the escaped byte
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

function isCommandsPath(path: string): boolean {
  return path === '/v1/commands/' || path === '/commands/'
}

/** "<remote address>|<remote port>": the same for a raw TCP socket and the TLS socket over it. */
function peerKey(socket: Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}`
}

function destroyConn(req: http.IncomingMessage, conn: Conn): void {
  req.socket.destroy()
  conn.socket.destroy()
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

/** Answers whose request body is still being discarded (AgentApi.linger): written now, ended when it is done. */
const lingering = new WeakMap<http.ServerResponse, {done: Promise<void>; answered: () => void}>()

function send(res: http.ServerResponse, status: number, text: string, headers: Record<string, string>, headOnly: boolean): void {
  if (res.headersSent || res.destroyed) return
  const data = Buffer.from(text)
  res.writeHead(status, {...headers, 'Content-Length': String(data.length)})
  const linger = lingering.get(res)
  if (!linger) {
    res.end(headOnly ? undefined : data)
    return
  }
  if (!headOnly) res.write(data)
  linger.answered()
  void linger.done.then(() => res.end())
}

function redirectPage(location: string): string {
  const esc = location.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
  return (
    '<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n' +
    `<p>You should be redirected automatically to the target URL: <a href="${esc}">${esc}</a>. If not, click the link.\n`
  )
}
