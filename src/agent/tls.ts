/**
 * Auto-TLS: a self-signed EC certificate for the agent API, as IPA makes it (CN = hostname,
 * critical subjectAltName = the advertised IP, valid from now - clock skew to now + 90 days,
 * ECDSA with SHA-512). Node can make keys but not certificates, so the X.509 DER is built here.
 */
import {createPrivateKey, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject} from 'node:crypto'
import {isIP} from 'node:net'

const CURVES = {p256: 'prime256v1', p384: 'secp384r1', p521: 'secp521r1'} as const

// --- minimal DER encoder ---
function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  while (n > 0) {
    bytes.unshift(n & 0xff)
    n >>= 8
  }
  return Buffer.from([0x80 | bytes.length, ...bytes])
}
const tlv = (tag: number, content: Buffer): Buffer => Buffer.concat([Buffer.from([tag]), len(content.length), content])
const seq = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items))
const set = (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items))
const explicit = (n: number, content: Buffer): Buffer => tlv(0xa0 | n, content)
function integer(bytes: Buffer): Buffer {
  let b = bytes
  while (b.length > 1 && b[0] === 0 && (b[1]! & 0x80) === 0) b = b.subarray(1)
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b])
  return tlv(0x02, b)
}
function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number)
  const out = [40 * parts[0]! + parts[1]!]
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f]
    let v = p >> 7
    while (v > 0) {
      chunk.unshift(0x80 | (v & 0x7f))
      v >>= 7
    }
    out.push(...chunk)
  }
  return tlv(0x06, Buffer.from(out))
}
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'))
function time(d: Date): Buffer {
  const iso = `${d.toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z` // YYYYMMDDHHMMSSZ
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(iso.slice(2))) : tlv(0x18, Buffer.from(iso))
}
const bitString = (b: Buffer): Buffer => tlv(0x03, Buffer.concat([Buffer.from([0]), b]))
const octets = (b: Buffer): Buffer => tlv(0x04, b)
const TRUE = Buffer.from([0x01, 0x01, 0xff])

function ipBytes(ip: string): Buffer {
  if (isIP(ip) === 4) return Buffer.from(ip.split('.').map(Number))
  // expand IPv6
  const [head, tail] = ip.split('::') as [string, string | undefined]
  const h = head ? head.split(':') : []
  const t = tail !== undefined && tail ? tail.split(':') : []
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  return Buffer.concat(groups.map((g) => Buffer.from(g.padStart(4, '0'), 'hex')))
}

export interface GeneratedCert {
  certPem: string
  keyPem: string
}

/** Make a self-signed certificate for `address` (IP or DNS name). */
export function generateSelfSignedCert(opts: {
  address: string
  commonName: string
  curve?: keyof typeof CURVES
  clockSkewSeconds?: number
  days?: number
  now?: Date
}): GeneratedCert {
  const curve = CURVES[opts.curve ?? 'p384']
  const {privateKey, publicKey} = generateKeyPairSync('ec', {namedCurve: curve})
  const now = opts.now ?? new Date()
  const notBefore = new Date(now.getTime() - (opts.clockSkewSeconds ?? 3600) * 1000)
  const notAfter = new Date(now.getTime() + (opts.days ?? 90) * 86400_000)
  const sigAlg = seq(oid('1.2.840.10045.4.3.4')) // ecdsa-with-SHA512
  const name = seq(set(seq(oid('2.5.4.3'), utf8(opts.commonName.slice(0, 64) || 'ironic-agent'))))
  const altName = isIP(opts.address) ? tlv(0x87, ipBytes(opts.address)) : tlv(0x82, Buffer.from(opts.address, 'ascii'))
  const extensions = explicit(3, seq(seq(oid('2.5.29.17'), TRUE, octets(seq(altName)))))
  const spki = publicKey.export({type: 'spki', format: 'der'})
  const tbs = seq(explicit(0, integer(Buffer.from([2]))), integer(randomBytes(16)), sigAlg, name, seq(time(notBefore), time(notAfter)), name, spki, extensions)
  const signature = sign('sha512', tbs, privateKey as KeyObject)
  const der = seq(tbs, sigAlg, bitString(signature))
  const certPem = `-----BEGIN CERTIFICATE-----\n${der
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n')}\n-----END CERTIFICATE-----\n`
  const keyPem = privateKey.export({type: 'pkcs8', format: 'pem'}) as string
  // Round-trip through Node's X.509 parser so a malformed certificate can never be served.
  const parsed = new X509Certificate(certPem)
  if (!parsed.checkPrivateKey(createPrivateKey(keyPem))) throw new Error('generated certificate does not match its key')
  return {certPem, keyPem}
}
