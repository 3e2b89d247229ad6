/**
 * The guest-address proxy for host processes (Ironic, ironic-inspector) in the VM tests.
 *
 * A qemu guest (user networking) reaches the host's loopback as 10.0.2.2, so the URLs Ironic hands
 * the agent say http://10.0.2.2:P/…; Ironic also HEADs (and may GET) those URLs itself. No host
 * process may send traffic to 10.0.2.2 (that address is outside this machine): Ironic runs with
 * `http_proxy=<this proxy>` and `no_proxy=127.0.0.1,localhost`, and this proxy maps 10.0.2.2:P to
 * 127.0.0.1:P. Every other host gets 403 and no connection is opened for it.
 *
 * Plain HTTP proxying (absolute-URI requests, any method, HEAD included) and CONNECT tunnels.
 */
import http from 'node:http'
import net from 'node:net'

/** The address the qemu guest uses for the host's loopback. */
export const GUEST_HOST = '10.0.2.2'

export interface ProxiedRequest {
  method: string
  /** Host as asked (e.g. 10.0.2.2), port as asked. */
  host: string
  port: number
  /** Path + query for plain requests; empty for CONNECT. */
  path: string
  /** True when it was forwarded to 127.0.0.1, false when refused. */
  allowed: boolean
}

export interface GuestProxy {
  /** http://127.0.0.1:<port>: give it to host processes as http_proxy. */
  url: string
  port: number
  /** Every request seen, in order. */
  seen: ProxiedRequest[]
  /** The environment for a host process that must use this proxy (lower and upper case). */
  env(): Record<string, string>
  close(): Promise<void>
}

// Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

function parseHostPort(authority: string, defaultPort: number): {host: string; port: number} | undefined {
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(authority)
  if (!m) return undefined
  const port = m[2] === undefined ? defaultPort : Number(m[2])
  if (!(port > 0 && port < 65536)) return undefined
  return {host: m[1]!.replace(/^\[|\]$/g, '').toLowerCase(), port}
}

export async function startGuestProxy(): Promise<GuestProxy> {
  const seen: ProxiedRequest[] = []
  const tunnels = new Set<net.Socket>()
  const server = http.createServer((req, res) => {
    let target: URL | undefined
    try {
      target = new URL(req.url ?? '')
    } catch {
      target = undefined
    }
    if (target?.protocol !== 'http:') {
      seen.push({method: req.method ?? '', host: '', port: 0, path: req.url ?? '', allowed: false})
      res.writeHead(400, {'Content-Type': 'text/plain', Connection: 'close'})
      res.end('test proxy: only absolute http:// URLs are proxied\n')
      return
    }
    const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase()
    const port = target.port ? Number(target.port) : 80
    const pathAndQuery = target.pathname + target.search
    const allowed = host === GUEST_HOST
    seen.push({method: req.method ?? '', host, port, path: pathAndQuery, allowed})
    if (!allowed) {
      res.writeHead(403, {'Content-Type': 'text/plain', Connection: 'close'})
      res.end(`test proxy: ${host}:${port} refused (only ${GUEST_HOST}:<port> is mapped to 127.0.0.1)\n`)
      return
    }
    const headers: http.OutgoingHttpHeaders = {}
    for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k) && v !== undefined) headers[k] = v
    headers.host = `127.0.0.1:${port}`
    const up = http.request({host: '127.0.0.1', port, method: req.method, path: pathAndQuery, headers}, (ures) => {
      const out: http.OutgoingHttpHeaders = {}
      for (const [k, v] of Object.entries(ures.headers)) if (!HOP_BY_HOP.has(k) && v !== undefined) out[k] = v
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, out)
      ures.pipe(res)
      ures.on('error', () => res.destroy())
    })
    up.on('error', (err) => {
      if (!res.headersSent) {
        res.writeHead(502, {'Content-Type': 'text/plain', Connection: 'close'})
        res.end(`test proxy: 127.0.0.1:${port}: ${err.message}\n`)
      } else res.destroy()
    })
    req.pipe(up)
  })

  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const hp = parseHostPort(req.url ?? '', 443)
    const allowed = hp?.host === GUEST_HOST
    seen.push({method: 'CONNECT', host: hp?.host ?? '', port: hp?.port ?? 0, path: '', allowed})
    client.on('error', () => client.destroy())
    if (!hp || !allowed) {
      client.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\ntest proxy: CONNECT ${req.url} refused\n`)
      return
    }
    tunnels.add(client)
    client.on('close', () => tunnels.delete(client))
    let connected = false
    const up = net.connect(hp.port, '127.0.0.1', () => {
      connected = true
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length) up.write(head)
      up.pipe(client)
      client.pipe(up)
    })
    up.on('error', (err) => {
      if (!connected && client.writable) client.end(`HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n${err.message}\n`)
      else client.destroy()
    })
    client.on('close', () => up.destroy())
    up.on('close', () => client.destroy())
  })

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as net.AddressInfo).port
  const url = `http://127.0.0.1:${port}`
  return {
    url,
    port,
    seen,
    env: () => ({
      http_proxy: url,
      HTTP_PROXY: url,
      https_proxy: url,
      HTTPS_PROXY: url,
      no_proxy: '127.0.0.1,localhost',
      NO_PROXY: '127.0.0.1,localhost',
    }),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        for (const s of tunnels) s.destroy()
        server.close(() => resolve())
      }),
  }
}
