/**
 * The guest-address proxy of the VM tests (test/helpers/proxy.ts): 10.0.2.2:P is served by
 * 127.0.0.1:P (GET, HEAD, CONNECT); every other host is refused with 403 and never contacted.
 * Only loopback traffic: the test talks to the proxy, the proxy to a 127.0.0.1 server.
 */
import http from 'node:http'
import net from 'node:net'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {startGuestProxy, type GuestProxy} from '../helpers/proxy.js'

interface Upstream {
  port: number
  hits: {method: string; url: string; host: string}[]
  close(): Promise<void>
}

async function upstream(): Promise<Upstream> {
  const hits: Upstream['hits'] = []
  const server = http.createServer((req, res) => {
    hits.push({method: req.method!, url: req.url!, host: req.headers.host ?? ''})
    const body = `hello ${req.url}`
    res.writeHead(req.url === '/missing' ? 404 : 200, {'Content-Length': Buffer.byteLength(body), 'X-Upstream': 'yes'})
    res.end(req.method === 'HEAD' ? undefined : body)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    port: (server.address() as net.AddressInfo).port,
    hits,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

/** One request through the proxy: the request line carries the absolute URL. */
function viaProxy(proxy: GuestProxy, method: string, url: string): Promise<{status: number; headers: http.IncomingHttpHeaders; body: string}> {
  return new Promise((resolve, reject) => {
    const req = http.request({host: '127.0.0.1', port: proxy.port, method, path: url, headers: {Host: new URL(url).host}, agent: false}, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString()}))
    })
    req.on('error', reject)
    req.end()
  })
}

/** CONNECT host:port through the proxy; returns the proxy's status line and, if open, a GET through the tunnel. */
function connect(proxy: GuestProxy, authority: string): Promise<{statusLine: string; tunnelled?: string}> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(proxy.port, '127.0.0.1')
    let buf = ''
    let opened = false
    sock.on('error', reject)
    sock.on('data', (c: Buffer) => {
      buf += c.toString()
      if (!opened && buf.includes('\r\n\r\n')) {
        const statusLine = buf.split('\r\n')[0]!
        if (!/ 200 /.test(statusLine)) {
          sock.destroy()
          resolve({statusLine})
          return
        }
        opened = true
        buf = ''
        sock.write('GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
      }
    })
    sock.on('end', () => {
      if (opened) resolve({statusLine: 'HTTP/1.1 200', tunnelled: buf})
    })
    sock.on('close', () => {
      if (!opened) resolve({statusLine: buf.split('\r\n')[0] ?? ''})
    })
    sock.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`)
  })
}

describe('guest-address proxy (test/helpers/proxy.ts)', () => {
  let proxy: GuestProxy
  let up: Upstream

  beforeAll(async () => {
    proxy = await startGuestProxy()
    up = await upstream()
  })
  afterAll(async () => {
    await proxy?.close()
    await up?.close()
  })

  it('maps 10.0.2.2:P to 127.0.0.1:P for GET and HEAD, status and headers intact', async () => {
    const got = await viaProxy(proxy, 'GET', `http://10.0.2.2:${up.port}/img.qcow2?x=1`)
    expect(got.status).toBe(200)
    expect(got.body).toBe('hello /img.qcow2?x=1')
    expect(got.headers['x-upstream']).toBe('yes')
    const head = await viaProxy(proxy, 'HEAD', `http://10.0.2.2:${up.port}/img.qcow2`)
    expect(head.status).toBe(200)
    expect(head.headers['content-length']).toBe(String(Buffer.byteLength('hello /img.qcow2')))
    expect((await viaProxy(proxy, 'GET', `http://10.0.2.2:${up.port}/missing`)).status).toBe(404)
    expect(up.hits.map((h) => `${h.method} ${h.url} ${h.host}`)).toEqual([
      `GET /img.qcow2?x=1 127.0.0.1:${up.port}`,
      `HEAD /img.qcow2 127.0.0.1:${up.port}`,
      `GET /missing 127.0.0.1:${up.port}`,
    ])
  })

  it('refuses every other host with 403 and contacts nothing', async () => {
    const before = up.hits.length
    for (const url of [
      `http://127.0.0.1:${up.port}/x`,
      `http://localhost:${up.port}/x`,
      'http://192.0.2.1/x',
      'http://example.com/x',
      `http://10.0.2.3:${up.port}/x`,
    ]) {
      const r = await viaProxy(proxy, 'GET', url)
      expect(r.status, url).toBe(403)
      expect(r.body).toMatch(/refused/)
    }
    expect((await viaProxy(proxy, 'HEAD', 'http://192.0.2.1/x')).status).toBe(403)
    expect(up.hits.length).toBe(before)
    expect(proxy.seen.filter((s) => !s.allowed).map((s) => s.host)).toEqual(['127.0.0.1', 'localhost', '192.0.2.1', 'example.com', '10.0.2.3', '192.0.2.1'])
  })

  it('CONNECT: tunnels 10.0.2.2:P to 127.0.0.1:P, refuses other hosts with 403', async () => {
    const ok = await connect(proxy, `10.0.2.2:${up.port}`)
    expect(ok.tunnelled).toMatch(/^HTTP\/1\.1 200/)
    expect(ok.tunnelled).toMatch(/hello \/tunnel/)
    const before = up.hits.length
    for (const a of [`127.0.0.1:${up.port}`, 'example.com:443', '192.0.2.1:80']) {
      const r = await connect(proxy, a)
      expect(r.statusLine, a).toMatch(/^HTTP\/1\.1 403/)
      expect(r.tunnelled).toBeUndefined()
    }
    expect(up.hits.length).toBe(before)
  })

  it('env() gives the proxy to host processes and keeps loopback direct', () => {
    const env = proxy.env()
    expect(env.http_proxy).toBe(proxy.url)
    expect(env.no_proxy).toBe('127.0.0.1,localhost')
  })
})
