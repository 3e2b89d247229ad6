import {X509Certificate} from 'node:crypto'
import https from 'node:https'
import {describe, expect, it} from 'vitest'
import {generateSelfSignedCert} from '../src/agent/tls.js'

describe('auto-TLS certificate', () => {
  it('is a self-signed EC certificate for the advertised IP, valid from now-skew to now+90d', () => {
    const now = new Date('2026-11-22T00:00:00Z')
    const {certPem} = generateSelfSignedCert({address: '192.0.2.10', commonName: 'node-1', now})
    const cert = new X509Certificate(certPem)
    expect(cert.subject).toBe('CN=node-1')
    expect(cert.issuer).toBe('CN=node-1')
    expect(cert.subjectAltName).toBe('IP Address:192.0.2.10')
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('secp384r1')
    expect(new Date(cert.validFrom).getTime()).toBe(now.getTime() - 3600_000)
    expect(new Date(cert.validTo).getTime()).toBe(now.getTime() + 90 * 86400_000)
    expect(cert.verify(cert.publicKey)).toBe(true)
    expect(cert.checkIP('192.0.2.10')).toBe('192.0.2.10')
  })

  it('supports IPv6 and the other curves', () => {
    const {certPem} = generateSelfSignedCert({address: 'fd00::1:2', commonName: 'h', curve: 'p256'})
    const cert = new X509Certificate(certPem)
    expect(cert.subjectAltName).toBe('IP Address:FD00:0:0:0:0:0:1:2')
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1')
  })

  it('lets a client that trusts only this certificate connect over TLS to 127.0.0.1', async () => {
    const {certPem, keyPem} = generateSelfSignedCert({address: '127.0.0.1', commonName: 'agent', curve: 'p521'})
    const server = https.createServer({cert: certPem, key: keyPem}, (_req, res) => res.end('ok'))
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as {port: number}).port
    try {
      const body = await new Promise<string>((resolve, reject) => {
        https
          .get({host: '127.0.0.1', port, ca: certPem, path: '/'}, (res) => {
            let s = ''
            res.on('data', (c) => (s += c))
            res.on('end', () => resolve(s))
          })
          .on('error', reject)
      })
      expect(body).toBe('ok')
      // A client with another CA must refuse it.
      const other = generateSelfSignedCert({address: '127.0.0.1', commonName: 'other'})
      await expect(new Promise((resolve, reject) => https.get({host: '127.0.0.1', port, ca: other.certPem}, resolve).on('error', reject))).rejects.toThrow()
    } finally {
      server.close()
    }
  })
})
