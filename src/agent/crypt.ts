/**
 * SHA-512 crypt (`$6$`, Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512", the format of
 * /etc/shadow and `openssl passwd -6`), so the rescue password is hashed in the agent rather than
 * by shipping the openssl program (1.7 MB with libssl) in the ramdisk for this one call.
 */
import {createHash, randomBytes} from 'node:crypto'

const ITOA64 = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
export const DEFAULT_ROUNDS = 5000
const MAX_SALT = 16

/** The order in which the 64 digest bytes are encoded, three at a time (the last byte alone). */
const ORDER: readonly (readonly [number, number, number])[] = [
  [0, 21, 42],
  [22, 43, 1],
  [44, 2, 23],
  [3, 24, 45],
  [25, 46, 4],
  [47, 5, 26],
  [6, 27, 48],
  [28, 49, 7],
  [50, 8, 29],
  [9, 30, 51],
  [31, 52, 10],
  [53, 11, 32],
  [12, 33, 54],
  [34, 55, 13],
  [56, 14, 35],
  [15, 36, 57],
  [37, 58, 16],
  [59, 17, 38],
  [18, 39, 60],
  [40, 61, 19],
  [62, 20, 41],
]

function b64(b2: number, b1: number, b0: number, n: number): string {
  let w = (b2 << 16) | (b1 << 8) | b0
  let out = ''
  for (let i = 0; i < n; i++) {
    out += ITOA64[w & 0x3f]
    w >>>= 6
  }
  return out
}

const sha512 = (...parts: Buffer[]): Buffer => {
  const h = createHash('sha512')
  for (const p of parts) h.update(p)
  return h.digest()
}

/** `len` bytes of `block` repeated. */
function stretch(block: Buffer, len: number): Buffer {
  const out = Buffer.alloc(len)
  for (let i = 0; i < len; i += block.length) block.copy(out, i, 0, Math.min(block.length, len - i))
  return out
}

/** A random salt of 16 characters from the crypt alphabet. */
export function randomSalt(): string {
  return [...randomBytes(MAX_SALT)].map((b) => ITOA64[b & 0x3f]).join('')
}

/** `$6$<salt>$<hash>` (or `$6$rounds=N$…` when rounds differ from 5000). */
export function sha512Crypt(password: string, salt: string = randomSalt(), rounds: number = DEFAULT_ROUNDS): string {
  if (!Number.isInteger(rounds) || rounds < 1000 || rounds > 999_999_999) throw new RangeError(`rounds must be 1000–999999999, not ${rounds}`)
  const s = salt.slice(0, MAX_SALT)
  if (/[$:\n]/.test(s)) throw new RangeError('the salt may not contain "$", ":" or a newline')
  const P = Buffer.from(password, 'utf8')
  const S = Buffer.from(s, 'utf8')

  const B = sha512(P, S, P)
  const a = createHash('sha512').update(P).update(S)
  let n = P.length
  for (; n > 64; n -= 64) a.update(B)
  a.update(B.subarray(0, n))
  for (let bits = P.length; bits > 0; bits >>= 1) a.update(bits & 1 ? B : P)
  const A = a.digest()

  const DP = createHash('sha512')
  for (let i = 0; i < P.length; i++) DP.update(P)
  const Pseq = stretch(DP.digest(), P.length)
  const DS = createHash('sha512')
  for (let i = 0; i < 16 + A[0]!; i++) DS.update(S)
  const Sseq = stretch(DS.digest(), S.length)

  let C = A
  for (let i = 0; i < rounds; i++) {
    const h = createHash('sha512')
    h.update(i & 1 ? Pseq : C)
    if (i % 3) h.update(Sseq)
    if (i % 7) h.update(Pseq)
    h.update(i & 1 ? C : Pseq)
    C = h.digest()
  }

  let out = ORDER.map(([x, y, z]) => b64(C[x]!, C[y]!, C[z]!, 4)).join('')
  out += b64(0, 0, C[63]!, 2)
  return `$6$${rounds === DEFAULT_ROUNDS ? '' : `rounds=${rounds}$`}${s}$${out}`
}
