// Small HTTP helpers for tests. Everything here talks to 127.0.0.1 only.
import {createServer} from 'node:net'

/** A TCP port that was free on 127.0.0.1 a moment ago (listen on :0, read the port, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      if (addr === null || typeof addr === 'string') {
        srv.close()
        reject(new Error('freePort: unexpected server address'))
        return
      }
      const {port} = addr
      srv.close((err) => (err ? reject(err) : resolve(port)))
    })
  })
}

export interface JsonResponse<T = any> {
  status: number
  headers: Headers
  /** Parsed JSON when the body is JSON, the raw text otherwise, null when empty. */
  body: T
}

/** Refuse anything that is not loopback: tests must never send traffic elsewhere. */
export function assertLoopback(url: string): void {
  const host = new URL(url).hostname
  if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]') {
    throw new Error(`refusing to send test traffic to a non-loopback host: ${url}`)
  }
}

/** fetch() with a JSON body and a parsed JSON answer. Never throws on HTTP status. */
export async function fetchJson<T = any>(
  url: string,
  init: {method?: string; headers?: Record<string, string>; body?: unknown; timeoutMs?: number} = {},
): Promise<JsonResponse<T>> {
  assertLoopback(url)
  const headers: Record<string, string> = {Accept: 'application/json', ...init.headers}
  let body: string | undefined
  if (init.body !== undefined) {
    body = typeof init.body === 'string' ? init.body : JSON.stringify(init.body)
    headers['Content-Type'] ??= 'application/json'
  }
  const res = await fetch(url, {
    method: init.method ?? 'GET',
    headers,
    body,
    signal: AbortSignal.timeout(init.timeoutMs ?? 30_000),
  })
  const text = await res.text()
  let parsed: unknown = null
  if (text.length > 0) {
    try {
      parsed = JSON.parse(text)
    } catch {
      parsed = text
    }
  }
  return {status: res.status, headers: res.headers, body: parsed as T}
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
