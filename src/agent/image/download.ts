/**
 * Image download as IPA does it (standby.py ImageDownload / _download_with_proxy), on node:http(s)
 * only: each URL tried in turn, per-request retries on 5xx and connection errors (4xx is final),
 * `proxies` per scheme with `no_proxy`, HTTP basic auth, an idle (read) timeout and an optional cap
 * on the whole download, and the checksum computed on the fly.
 *
 * Unlike IPA, a connection that drops mid-stream is **resumed** with a Range request from the
 * first byte not yet delivered (the 206's Content-Range is checked); a server that ignores Range
 * answers 200 and the bytes already delivered are read again and dropped, so the consumer sees
 * one uninterrupted byte stream either way and the hash stays right.
 */
import {readFileSync} from 'node:fs'
import http, {type IncomingMessage} from 'node:http'
import https from 'node:https'
import {isIP} from 'node:net'
import {posix} from 'node:path'
import {Readable} from 'node:stream'
import {createHash, type Hash} from 'node:crypto'
import tls from 'node:tls'
import {ImageChecksumError, ImageDownloadError, InvalidCommandParamsError, RESTError} from '../errors.js'
import type {Logger} from '../log.js'
import {GcNudger} from './gc.js'

/** The image_info fields the downloader reads (Ironic's names). */
export interface ImageInfo {
  id: string
  urls: string[]
  checksum?: string | null
  os_hash_algo?: string | null
  os_hash_value?: string | null
  disk_format?: string | null
  container_format?: string | null
  image_type?: string | null
  stream_raw_images?: boolean | null
  proxies?: {http?: string; https?: string} | null
  no_proxy?: string | null
  image_server_auth_strategy?: string | null
  image_server_user?: string | null
  image_server_password?: string | null
  /** base64 of a whole Authorization header value (e.g. "Bearer …"). */
  image_request_authorization?: string | null
  node_uuid?: string | null
  configdrive?: string | null
  deploy_boot_mode?: string | null
  [key: string]: unknown
}

/** IPA's _validate_image_info: id, a non-empty urls list, and a checksum it can verify. */
export function validateImageInfo(imageInfo: unknown): asserts imageInfo is ImageInfo {
  if (!imageInfo || typeof imageInfo !== 'object' || Array.isArray(imageInfo)) {
    throw new InvalidCommandParamsError('image_info must be an object')
  }
  const info = imageInfo as Record<string, unknown>
  for (const field of ['id', 'urls']) {
    if (!(field in info)) throw new InvalidCommandParamsError(`Image is missing '${field}' field.`)
  }
  if (!Array.isArray(info.urls) || info.urls.length === 0 || !info.urls.every((u) => typeof u === 'string' && u)) {
    throw new InvalidCommandParamsError(`Image 'urls' must be a list with at least one element.`)
  }
  const {checksum, os_hash_algo: algo, os_hash_value: value} = info
  let available = false
  if (checksum !== undefined && checksum !== null) {
    if (typeof checksum !== 'string' || !checksum) throw new InvalidCommandParamsError(`Image 'checksum' must be a non-empty string.`)
    available = true
  }
  if (algo || value) {
    if (typeof algo !== 'string' || !algo) throw new InvalidCommandParamsError(`Image 'os_hash_algo' must be a non-empty string.`)
    if (typeof value !== 'string' || !value) throw new InvalidCommandParamsError(`Image 'os_hash_value' must be a non-empty string.`)
    available = true
  }
  if (!available) {
    throw new InvalidCommandParamsError(
      `Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification.`,
    )
  }
}

export interface DownloadSettings {
  /** image_download_connection_timeout: connect and idle-read timeout, seconds. */
  connectionTimeout: number
  /** image_download_connection_retries. */
  retries: number
  /** image_download_connection_retry_interval, seconds. */
  retryInterval: number
  /** image_download_max_duration, seconds (0: no cap). */
  maxDuration: number
  /** Skip TLS verification (ipa-insecure). */
  insecure?: boolean
  /** CA bundle for https image servers (ipa-cafile). */
  cafile?: string
  log: Logger
}

/** Settings from the agent config (names as in SETTINGS). */
export function downloadSettings(
  config: {
    imageDownloadConnectionTimeout: number
    imageDownloadConnectionRetries: number
    imageDownloadConnectionRetryInterval: number
    imageDownloadMaxDuration: number
    insecure: boolean
    cafile?: string
  },
  log: Logger,
): DownloadSettings {
  return {
    connectionTimeout: config.imageDownloadConnectionTimeout,
    retries: config.imageDownloadConnectionRetries,
    retryInterval: config.imageDownloadConnectionRetryInterval,
    maxDuration: config.imageDownloadMaxDuration,
    insecure: config.insecure,
    cafile: config.cafile,
    log,
  }
}

const HASH_BY_LENGTH: Record<number, string> = {32: 'md5', 40: 'sha1', 64: 'sha256', 128: 'sha512'}
const KNOWN_ALGOS = new Set(['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512'])
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** A failure worth another try (connection trouble, 5xx, a short body). */
class Retryable extends Error {}

/** An HTTP status that is final (4xx), as IPA: "do not retry 4xx status codes". */
class HttpStatusError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

/** Does `host` match the comma-separated no_proxy list (`*`, names, `.suffix`, IPs, host:port)? */
export function bypassProxy(url: URL, noProxy: string | undefined | null): boolean {
  if (!noProxy) return false
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  const port = url.port || (url.protocol === 'https:' ? '443' : '80')
  for (const raw of noProxy.split(',')) {
    let entry = raw.trim().toLowerCase()
    if (!entry) continue
    if (entry === '*') return true
    const m = /^(.*):(\d+)$/.exec(entry)
    if (m && !isIP(entry)) {
      if (m[2] !== port) continue
      entry = m[1]!
    }
    entry = entry.replace(/^\[|\]$/g, '')
    if (host === entry) return true
    const suffix = entry.startsWith('.') ? entry : `.${entry}`
    if (!isIP(host) && host.endsWith(suffix)) return true
  }
  return false
}

/** The proxy URL to use for `url`, if any. */
export function proxyFor(url: URL, info: Pick<ImageInfo, 'proxies' | 'no_proxy'>): URL | undefined {
  const scheme = url.protocol.replace(':', '') as 'http' | 'https'
  const p = info.proxies?.[scheme]
  if (!p || bypassProxy(url, info.no_proxy)) return undefined
  return new URL(p.includes('://') ? p : `http://${p}`)
}

function basicAuth(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

/** The URL without credentials, for logs and error texts. */
export function redact(url: string): string {
  try {
    const u = new URL(url)
    if (u.username || u.password) {
      u.username = '***'
      u.password = ''
    }
    return u.href
  } catch {
    return url
  }
}

export interface RequestOptions {
  info: Pick<ImageInfo, 'proxies' | 'no_proxy' | 'image_server_auth_strategy' | 'image_server_user' | 'image_server_password' | 'image_request_authorization'>
  settings: DownloadSettings
  headers?: Record<string, string>
}

/** One GET through the right proxy (if any); resolves with the response head. */
export function httpGet(urlText: string, opts: RequestOptions): Promise<IncomingMessage> {
  const url = new URL(urlText)
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return Promise.reject(new HttpStatusError(0, `unsupported URL scheme ${url.protocol} (only http and https)`))
  }
  const headers: Record<string, string> = {'User-Agent': 'rdk-agent', ...opts.headers}
  if (typeof opts.info.image_request_authorization === 'string' && opts.info.image_request_authorization) {
    // Ironic's instance_info image_request_authorization_secret, base64 of the whole header value.
    headers.Authorization = Buffer.from(opts.info.image_request_authorization, 'base64').toString('utf8')
  } else if (url.username || url.password) {
    headers.Authorization = basicAuth(decodeURIComponent(url.username), decodeURIComponent(url.password))
  } else if (opts.info.image_server_auth_strategy === 'http_basic' && opts.info.image_server_user) {
    headers.Authorization = basicAuth(opts.info.image_server_user, opts.info.image_server_password ?? '')
  }
  const timeoutMs = Math.max(1, opts.settings.connectionTimeout * 1000)
  const tlsOpts: tls.ConnectionOptions = {
    rejectUnauthorized: !opts.settings.insecure,
    ...(opts.settings.cafile ? {ca: readFileSync(opts.settings.cafile)} : {}),
  }
  const proxy = proxyFor(url, opts.info)
  const target = {hostname: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || (url.protocol === 'https:' ? 443 : 80))}
  const path = url.pathname + url.search

  return new Promise<IncomingMessage>((resolve, reject) => {
    let settled = false
    const fail = (err: Error): void => {
      if (settled) return
      settled = true
      reject(err instanceof HttpStatusError ? err : new Retryable(err.message))
    }
    const onResponse = (res: IncomingMessage): void => {
      if (settled) {
        res.destroy()
        return
      }
      settled = true
      // The idle timeout keeps guarding the body: a stalled transfer fails after timeoutMs.
      res.socket?.setTimeout(timeoutMs, () => res.destroy(new Error(`no data for ${opts.settings.connectionTimeout} s (read timeout)`)))
      resolve(res)
    }
    const send = (mod: typeof http | typeof https, reqOpts: http.RequestOptions): void => {
      const req = mod.request({...reqOpts, agent: false, headers: {...headers, ...reqOpts.headers}}, onResponse)
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`timed out after ${opts.settings.connectionTimeout} s`)))
      req.on('error', fail)
      req.end()
    }

    if (!proxy) {
      send(url.protocol === 'https:' ? https : http, {...tlsOpts, ...target, path, method: 'GET'})
      return
    }
    const proxyHeaders: Record<string, string> = {}
    if (proxy.username || proxy.password) {
      proxyHeaders['Proxy-Authorization'] = basicAuth(decodeURIComponent(proxy.username), decodeURIComponent(proxy.password))
    }
    const proxyMod = proxy.protocol === 'https:' ? https : http
    const proxyTarget = {hostname: proxy.hostname.replace(/^\[|\]$/g, ''), port: Number(proxy.port || (proxy.protocol === 'https:' ? 443 : 80))}
    if (url.protocol === 'http:') {
      // Plain HTTP through a forward proxy: the absolute URL as the request target.
      send(proxyMod, {...proxyTarget, path: url.href.replace(/\/\/[^@/]*@/, '//'), method: 'GET', headers: {...proxyHeaders, Host: url.host}})
      return
    }
    // HTTPS through the proxy: CONNECT, then TLS to the image server inside the tunnel.
    const connect = proxyMod.request({
      ...proxyTarget,
      agent: false,
      method: 'CONNECT',
      path: `${target.hostname}:${target.port}`,
      headers: {...proxyHeaders, Host: `${target.hostname}:${target.port}`},
    })
    connect.setTimeout(timeoutMs, () => connect.destroy(new Error(`proxy CONNECT timed out after ${opts.settings.connectionTimeout} s`)))
    connect.on('error', fail)
    connect.on('connect', (res, socket) => {
      if (res.statusCode !== 200) {
        socket.destroy()
        fail(new Error(`proxy ${proxy.host} refused CONNECT to ${target.hostname}:${target.port} with status ${res.statusCode}`))
        return
      }
      const req = https.request(
        {
          ...tlsOpts,
          ...target,
          path,
          method: 'GET',
          headers,
          createConnection: () => tls.connect({...tlsOpts, socket, host: target.hostname, servername: isIP(target.hostname) ? undefined : target.hostname}),
        },
        onResponse,
      )
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`timed out after ${opts.settings.connectionTimeout} s`)))
      req.on('error', fail)
      req.end()
    })
    connect.end()
  })
}

async function readBody(res: IncomingMessage, limit: number): Promise<Buffer> {
  const parts: Buffer[] = []
  let n = 0
  for await (const chunk of res) {
    n += (chunk as Buffer).length
    if (n > limit) {
      res.destroy()
      throw new Error(`response larger than ${limit} bytes`)
    }
    parts.push(chunk as Buffer)
  }
  return Buffer.concat(parts)
}

/**
 * GET with IPA's retry rule: up to `retries` more attempts, `retryInterval` apart, on connection
 * errors and 5xx; a 4xx (or any non-200) after the last attempt is final. Rejects with
 * ImageDownloadError(id, "Received status code …").
 */
export async function getWithRetries(
  url: string,
  id: string,
  opts: RequestOptions,
  accept: (status: number) => boolean = (s) => s === 200,
): Promise<IncomingMessage> {
  const {retries, retryInterval, log} = opts.settings
  for (let attempt = 0; ; attempt++) {
    let status = 0
    try {
      const res = await followRedirects(url, opts)
      status = res.statusCode ?? 0
      if (accept(status)) return res
      const body = (await readBody(res, 4096).catch(() => Buffer.alloc(0))).toString('utf8')
      throw new HttpStatusError(status, `Received status code ${status} from ${redact(url)}, expected 200. Response body: ${body}`)
    } catch (err) {
      const final = attempt >= retries || (err instanceof HttpStatusError && (status < 500 || status === 0))
      if (final) throw new ImageDownloadError(id, (err as Error).message)
      log.warn('unable to connect, retrying', {url: redact(url), attempt: attempt + 1, of: retries, err: (err as Error).message})
      await sleep(retryInterval * 1000)
    }
  }
}

const BODY_HIGH_WATER = 4 * 1024 * 1024
const BODY_LOW_WATER = 1024 * 1024

/**
 * A response body's chunks exactly as the socket delivers them ('data' events), paused above
 * 4 MiB of backlog. `for await` over the response would call Readable.read(), which joins all
 * buffered chunks into a new Buffer: one more copy of the image, measurable in an emulated VM.
 * Ends when the response ends or closes (the caller checks `res.complete`); throws its error.
 */
async function* bodyChunks(res: IncomingMessage): AsyncGenerator<Buffer> {
  const queue: Buffer[] = []
  let head = 0
  let queued = 0
  let ended = false
  let failure: Error | undefined
  let wake: (() => void) | undefined
  const notify = (): void => {
    const w = wake
    wake = undefined
    w?.()
  }
  const onData = (c: Buffer): void => {
    queue.push(c)
    queued += c.length
    if (queued >= BODY_HIGH_WATER) res.pause()
    notify()
  }
  const onEnd = (): void => {
    ended = true
    notify()
  }
  const onError = (err: Error): void => {
    failure ??= err
    notify()
  }
  res.on('data', onData)
  res.on('end', onEnd)
  res.on('close', onEnd)
  res.on('error', onError)
  try {
    for (;;) {
      if (head < queue.length) {
        const c = queue[head]!
        queue[head++] = undefined as unknown as Buffer
        if (head > 64) {
          queue.splice(0, head)
          head = 0
        }
        queued -= c.length
        if (queued < BODY_LOW_WATER && res.isPaused() && !failure) res.resume()
        yield c
        continue
      }
      if (failure) throw failure
      if (ended || res.destroyed) return
      await new Promise<void>((r) => (wake = r))
    }
  } finally {
    res.off('data', onData)
    res.off('end', onEnd)
    res.off('close', onEnd)
    res.off('error', onError)
  }
}

const REDIRECTS = new Set([301, 302, 303, 307, 308])
const MAX_REDIRECTS = 10

/**
 * httpGet, following redirects as python-requests does for IPA (at most 10). Credentials from
 * image_info are not sent to another host.
 */
async function followRedirects(url: string, opts: RequestOptions): Promise<IncomingMessage> {
  const origin = new URL(url).host
  let current = url
  for (let hop = 0; ; hop++) {
    const sameHost = new URL(current).host === origin
    const res = await httpGet(current, sameHost ? opts : {...opts, info: {...opts.info, image_server_auth_strategy: null, image_request_authorization: null}})
    const location = res.headers.location
    if (!REDIRECTS.has(res.statusCode ?? 0) || !location) return res
    res.resume()
    if (hop >= MAX_REDIRECTS) throw new HttpStatusError(0, `more than ${MAX_REDIRECTS} redirects from ${redact(url)}`)
    current = new URL(location, current).href
    opts.settings.log.debug('following a redirect', {to: redact(current)})
  }
}

/** IPA's _fetch_checksum: a checksum that is an http(s) URL names a checksums file. */
export async function fetchChecksum(checksum: string, info: ImageInfo, settings: DownloadSettings): Promise<string> {
  if (!/^https?:\/\//i.test(checksum)) return checksum.trim()
  settings.log.debug('downloading checksums file', {url: redact(checksum)})
  const res = await getWithRetries(checksum, checksum, {info, settings})
  let text: string
  try {
    text = (await readBody(res, 16 * 1024 * 1024)).toString('utf8')
  } catch (err) {
    throw new ImageDownloadError(checksum, `cannot read the checksums file: ${(err as Error).message}`)
  }
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
  if (lines.length === 0) throw new ImageDownloadError(checksum, 'Empty checksum file')
  if (lines.length === 1 && !/\s/.test(lines[0]!)) return lines[0]!
  const expected = posix.basename(new URL(info.urls[0]!).pathname)
  for (const line of lines) {
    // "<sum>  <name>", "<sum> *<name>" (binary mode), or BSD style "SHA256 (<name>) = <sum>"
    const bsd = /^\w+ \((.+)\) = ([0-9a-fA-F]+)$/.exec(line)
    if (bsd) {
      if (bsd[1] === expected) return bsd[2]!
      continue
    }
    const m = /^(\S+)\s+(.+)$/.exec(line)
    if (m && m[2]!.trim().replace(/^\*/, '') === expected) return m[1]!
  }
  throw new ImageDownloadError(checksum, `Checksum file does not contain name ${expected}`)
}

/** Which hash to compute and the expected value (IPA: os_hash_algo, else the legacy checksum). */
export async function resolveChecksum(info: ImageInfo, settings: DownloadSettings): Promise<{algo: string; expected: string}> {
  const algo = info.os_hash_algo?.toLowerCase()
  if (algo && info.os_hash_value) {
    if (!KNOWN_ALGOS.has(algo)) {
      throw new RESTError(
        `Unable to verify image ${info.id} with available checksums. Please make sure the specified 'os_hash_algo' (currently ${algo}) is supported by this ramdisk, or provide a md5 checksum via the 'checksum' field`,
      )
    }
    return {algo, expected: (await fetchChecksum(info.os_hash_value, info, settings)).toLowerCase()}
  }
  if (info.checksum) {
    const expected = (await fetchChecksum(info.checksum, info, settings)).toLowerCase()
    const byLength = HASH_BY_LENGTH[expected.length]
    if (!byLength || !/^[0-9a-f]+$/.test(expected)) {
      throw new ImageDownloadError(info.id, `cannot tell the algorithm of checksum '${expected}' (expected 32, 40, 64 or 128 hex digits)`)
    }
    return {algo: byLength, expected}
  }
  throw new RESTError(`Unable to verify image ${info.id} with available checksums: give 'os_hash_algo' and 'os_hash_value', or 'checksum'`)
}

/** Parse `Content-Range: bytes <start>-<end>/<total|*>`. */
function parseContentRange(v: string | undefined): {start: number; end: number; total: number | undefined} | undefined {
  const m = v ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(v.trim()) : null
  if (!m) return undefined
  return {start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3])}
}

export interface DownloadStats {
  /** The URL the bytes came from. */
  url?: string
  bytes: number
  /** Requests made after the first one (resumes and restarts). */
  resumes: number
  /** Resumes the server answered with 206 (true resume) rather than 200 (restart from 0). */
  rangeResumes: number
  seconds: number
}

/**
 * One download of one image: iterate `chunks()` (or `stream()`) once, then `verify()`.
 * Construct with `ImageDownload.open()`, which resolves the checksum and connects, so a bad URL
 * or checksum fails before anything is written.
 */
export class ImageDownload {
  readonly stats: DownloadStats = {bytes: 0, resumes: 0, rangeResumes: 0, seconds: 0}
  private readonly hash: Hash
  private started = Date.now()
  private actual?: string
  private used = false

  private constructor(
    readonly info: ImageInfo,
    private readonly settings: DownloadSettings,
    readonly algo: string,
    readonly expected: string,
    private res: IncomingMessage,
    private readonly url: string,
  ) {
    this.hash = createHash(algo)
    this.stats.url = redact(url)
  }

  /** Total size announced by the server (Content-Length of the 200), if any. */
  get size(): number | undefined {
    const len = this.res.headers['content-length']
    return len !== undefined && /^\d+$/.test(len) ? Number(len) : undefined
  }

  static async open(info: ImageInfo, settings: DownloadSettings): Promise<ImageDownload> {
    const started = Date.now()
    const {algo, expected} = await resolveChecksum(info, settings)
    const details: string[] = []
    for (const url of info.urls) {
      settings.log.info('attempting to download image', {url: redact(url)})
      try {
        const res = await getWithRetries(url, info.id, {info, settings})
        const dl = new ImageDownload(info, settings, algo, expected, res, url)
        dl.started = started
        return dl
      } catch (err) {
        const msg = err instanceof ImageDownloadError ? err.details.replace(/^Download of image .*? failed: /, '') : (err as Error).message
        const line = `URL: ${redact(url)}; time: ${((Date.now() - started) / 1000).toFixed(3)} seconds. Error: ${msg}`
        settings.log.warn(line)
        details.push(line)
      }
    }
    throw new ImageDownloadError(info.id, details.join('\n '))
  }

  /**
   * The image bytes, in order, exactly once; resumes transparently after a dropped connection.
   * (One generator, not two: under emulation every async layer per 64 KiB chunk shows.)
   */
  async *chunks(): AsyncGenerator<Buffer> {
    if (this.used) throw new Error('an ImageDownload can be read only once')
    this.used = true
    try {
      const {retries, retryInterval, maxDuration, log} = this.settings
      const total = this.size
      let delivered = 0
      let skip = 0 // bytes to drop from the current response (a server that ignored Range)
      let failures = 0
      const deadline = maxDuration > 0 ? this.started + maxDuration * 1000 : Infinity
      const gc = new GcNudger()
      for (;;) {
        try {
          for await (const raw of bodyChunks(this.res)) {
            let chunk = raw as Buffer
            if (Date.now() > deadline) {
              this.res.destroy()
              throw new ImageDownloadError(this.info.id, `the download took longer than image_download_max_duration (${maxDuration} s)`)
            }
            if (skip > 0) {
              if (chunk.length <= skip) {
                skip -= chunk.length
                continue
              }
              chunk = chunk.subarray(skip)
              skip = 0
            }
            this.hash.update(chunk)
            gc.add(chunk.length)
            delivered += chunk.length
            this.stats.bytes = delivered
            yield chunk
          }
          if (!this.res.complete) throw new Retryable('the connection closed before the response was complete')
          if (total !== undefined && delivered < total) throw new Retryable(`the connection closed after ${delivered} of ${total} bytes`)
          break
        } catch (err) {
          if (err instanceof RESTError) throw err
          this.res.destroy()
          if (++failures > retries) {
            const of = total !== undefined ? ` of ${total}` : ''
            throw new ImageDownloadError(
              this.info.id,
              `the download from ${redact(this.url)} ended early, after ${delivered}${of} bytes and ${retries} retries: ${(err as Error).message}`,
            )
          }
          log.warn('image download interrupted, resuming', {url: redact(this.url), at: delivered, attempt: failures, of: retries, err: (err as Error).message})
          await sleep(retryInterval * 1000)
          const res = await getWithRetries(
            this.url,
            this.info.id,
            {info: this.info, settings: this.settings, headers: delivered > 0 ? {Range: `bytes=${delivered}-`} : {}},
            (s) => s === 200 || s === 206,
          )
          this.stats.resumes++
          if (res.statusCode === 206) {
            const cr = parseContentRange(res.headers['content-range'])
            if (!cr || cr.start !== delivered || (total !== undefined && cr.total !== undefined && cr.total !== total)) {
              res.destroy()
              throw new ImageDownloadError(
                this.info.id,
                `the server answered a resume at byte ${delivered} with Content-Range '${res.headers['content-range'] ?? ''}'`,
              )
            }
            this.stats.rangeResumes++
            skip = 0
          } else {
            // 200: the server ignored Range and sends everything again; drop what we already have.
            log.info('the image server ignored the Range request: reading again from byte 0', {url: redact(this.url), skipping: delivered})
            skip = delivered
          }
          this.res = res
        }
      }
      this.actual = this.hash.digest('hex')
      this.stats.seconds = (Date.now() - this.started) / 1000
      log.info('image downloaded', {url: redact(this.url), bytes: delivered, seconds: this.stats.seconds, resumes: this.stats.resumes})
    } finally {
      if (this.actual === undefined) this.close()
    }
  }

  /** A Node stream of the image bytes (the same bytes as chunks()). */
  stream(): Readable {
    return Readable.from(this.chunks(), {objectMode: false})
  }

  /** The hex digest of the whole image (after chunks() has been read to its end). */
  digest(): string {
    if (this.actual === undefined) throw new Error('the image has not been read to its end yet')
    return this.actual
  }

  /** Stop background work of a download abandoned half-way. */
  close(): void {
    this.res.destroy()
  }

  /** Compare the on-the-fly hash with the expected one (ImageChecksumError on mismatch). */
  verify(location: string): void {
    const actual = this.digest()
    if (actual !== this.expected) {
      this.settings.log.error('image checksum mismatch', {location, algo: this.algo, expected: this.expected, actual})
      // IPA's text, with the algorithm after each value so the mismatch is readable on its own.
      throw new ImageChecksumError(this.info.id, location, `${this.expected} (${this.algo})`, `${actual} (${this.algo})`)
    }
    this.settings.log.info('image checksum verified', {algo: this.algo, location})
  }
}
