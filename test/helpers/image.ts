/**
 * Shared pieces of the image tests: a loopback HTTP image server whose misbehaviour is scripted
 * per request (drop the connection mid-stream, ignore Range, a body shorter than its Content-Length,
 * 404 — also for GET only, after a HEAD that succeeded), a tiny forward
 * proxy, and test images built with the real qemu-img from a random raw disk with holes.
 */
import {createHash, randomBytes} from 'node:crypto'
import {createReadStream, statSync, writeFileSync} from 'node:fs'
import http from 'node:http'
import type net from 'node:net'
import path from 'node:path'
import {run} from '../../src/common/exec.js'
import type {Logger} from '../../src/agent/log.js'

export const MIB = 1024 * 1024
export const quiet: Logger = {debug() {}, info() {}, warn() {}, error() {}, child: () => quiet}

export interface Behaviour {
  /**
   * Destroy the socket after this many body bytes of a response (first `times` requests only;
   * `times: Infinity` drops every response, so resuming with Range never completes either).
   */
  dropAfter?: number
  times?: number
  /** Requests served under this behaviour so far (set by the server). */
  served?: number
  /** Answer Range requests with 200 and the whole body. */
  ignoreRange?: boolean
  /**
   * The file ends here for this server: bytes at and after this offset are never sent, yet every
   * response announces the full length; the server then closes the connection cleanly (FIN), as a
   * server whose copy is shorter than it claims. A Range resume at or past it gets a 206 and no bytes.
   */
  truncateAt?: number
  /** Answer with this status and no image. */
  status?: number
  /**
   * Answer GET (not HEAD) with this status: HEAD still says 200 with the full length, as when the
   * image vanishes between Ironic's check (it HEADs every image URL) and the agent's download.
   */
  getStatus?: number
  /** Answer 302 to this location. */
  redirect?: string
}

export interface SeenRequest {
  method?: string
  path: string
  range?: string
  authorization?: string
  viaProxy?: boolean
}

export interface ImageServer {
  url: string
  port: number
  requests: SeenRequest[]
  files: Map<string, string>
  behaviour: Map<string, Behaviour>
  close(): Promise<void>
}

export async function startImageServer(): Promise<ImageServer> {
  const requests: SeenRequest[] = []
  const files = new Map<string, string>()
  const behaviour = new Map<string, Behaviour>()
  const server = http.createServer((req, res) => {
    const p = new URL(req.url!, 'http://x').pathname
    requests.push({
      method: req.method,
      path: p,
      range: req.headers.range,
      authorization: req.headers.authorization,
      viaProxy: req.headers['x-via-test-proxy'] === '1',
    })
    const b = behaviour.get(p) ?? {}
    const n = (b.served ?? 0) + 1
    b.served = n
    const file = files.get(p)
    if (b.redirect) {
      res.writeHead(302, {Location: b.redirect})
      res.end()
      return
    }
    const status = b.status ?? (b.getStatus && req.method !== 'HEAD' ? b.getStatus : undefined)
    if (status || !file) {
      res.writeHead(status ?? 404, {'Content-Type': 'text/plain'})
      res.end(status ? `status ${status}` : 'no such image')
      return
    }
    const size = statSync(file).size
    let start = 0
    const m = req.headers.range ? /^bytes=(\d+)-$/.exec(req.headers.range) : null
    if (m && !b.ignoreRange) {
      start = Number(m[1])
      res.writeHead(206, {'Content-Length': size - start, 'Content-Range': `bytes ${start}-${size - 1}/${size}`, 'Accept-Ranges': 'bytes'})
    } else {
      res.writeHead(200, {'Content-Length': size, 'Accept-Ranges': b.ignoreRange ? 'none' : 'bytes'})
    }
    let end = size
    let graceful = false
    if (b.truncateAt !== undefined && b.truncateAt < end) {
      end = Math.max(start, b.truncateAt)
      graceful = true
    }
    if (b.dropAfter !== undefined && n <= (b.times ?? 1) && start + b.dropAfter < end) {
      end = start + b.dropAfter
      graceful = false
    }
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    if (end === size) {
      createReadStream(file, {start}).pipe(res)
      return
    }
    // Cut only once every byte meant for the client has left this process, so it sees exactly `end`.
    const cut = (): void => {
      const sock = res.socket
      if (!sock) return
      if (res.writableLength + sock.writableLength > 0) return void setTimeout(cut, 5)
      setTimeout(() => (graceful ? sock.end() : sock.destroy()), 20)
    }
    if (end <= start) {
      res.flushHeaders()
      cut()
      return
    }
    const rs = createReadStream(file, {start, end: end - 1})
    rs.on('data', (c) => res.write(c))
    rs.on('end', cut)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as net.AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    files,
    behaviour,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

/** A forward proxy for plain http (absolute-URI requests) that only talks to 127.0.0.1. */
export async function startProxy(): Promise<{url: string; seen: string[]; close(): Promise<void>}> {
  const seen: string[] = []
  const server = http.createServer((req, res) => {
    seen.push(req.url!)
    const target = new URL(req.url!)
    if (target.hostname !== '127.0.0.1') {
      res.writeHead(403)
      res.end('loopback only')
      return
    }
    const up = http.request(
      {host: '127.0.0.1', port: target.port, path: target.pathname + target.search, method: req.method, headers: {...req.headers, 'x-via-test-proxy': '1'}},
      (ures) => {
        res.writeHead(ures.statusCode ?? 502, ures.headers)
        ures.pipe(res)
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as net.AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

export const sha256File = (file: string, length?: number): Promise<string> =>
  new Promise((resolve, reject) => {
    const h = createHash('sha256')
    createReadStream(file, length !== undefined ? {start: 0, end: length - 1} : {})
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject)
  })

/**
 * A raw disk of `mib` MiB: random data, compressible data and zero holes (a third each, and a hole
 * over the last but one MiB), optionally with a DOS partition table so it passes the partition check.
 */
export async function makeRawImage(file: string, mib: number, opts: {dos?: boolean} = {}): Promise<void> {
  const buf = randomBytes(mib * MIB)
  for (let i = 0; i < mib; i++) {
    if (i % 3 === 1 || i === mib - 2) buf.fill(0, i * MIB, (i + 1) * MIB)
    // every third MiB compresses (so `qemu-img convert -c` really makes compressed clusters):
    // a repeated phrase with a random byte every 512
    if (i % 3 === 2) {
      buf.fill(`rdk image line ${i} `, i * MIB, (i + 1) * MIB)
      for (let j = i * MIB; j < (i + 1) * MIB; j += 512) buf[j] = buf[j + 7]! ^ (j >> 9)
    }
  }
  buf.fill(0, 0, MIB) // room for a partition table
  writeFileSync(file, buf)
  if (opts.dos) await run('sfdisk', ['-q', file], {input: 'label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=8192, type=83\n'})
}

export async function qemuImg(args: string[]): Promise<void> {
  await run('qemu-img', args)
}

export const join = path.join
