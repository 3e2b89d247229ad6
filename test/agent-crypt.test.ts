/**
 * sha512Crypt against the real `openssl passwd -6` (the program the agent used to run for the
 * rescue password, and what /etc/shadow readers accept).
 */
import {execFileSync} from 'node:child_process'
import {describe, expect, it} from 'vitest'
import {randomSalt, sha512Crypt} from '../src/agent/crypt.js'

const openssl = (password: string, salt: string): string =>
  execFileSync('openssl', ['passwd', '-6', '-salt', salt, '-stdin'], {input: `${password}\n`})
    .toString()
    .trim()

describe('sha512Crypt', () => {
  const cases: [string, string][] = [
    ['secret', 'saltsalt'],
    [' ', 'x'],
    ['a', 'abcdefghijklmnop'],
    ['pässwörd ☃', 'ÜnïcodeSalt'.slice(0, 8)],
    ['p'.repeat(64), 'sixtyfour'],
    ['long password '.repeat(9), '0123456789ABCDEF'],
    ['tab\tand spaces  ', './/..//'],
  ]
  for (const [password, salt] of cases) {
    it(`matches openssl passwd -6 for a ${Buffer.byteLength(password)}-byte password, salt ${JSON.stringify(salt)}`, () => {
      expect(sha512Crypt(password, salt)).toBe(openssl(password, salt))
    })
  }

  it('truncates the salt to 16 characters as crypt(3) does, and takes explicit rounds', () => {
    expect(sha512Crypt('pw', '0123456789abcdefXYZ')).toBe(openssl('pw', '0123456789abcdef'))
    expect(sha512Crypt('pw', 'salt', 1000)).toMatch(/^\$6\$rounds=1000\$salt\$[./0-9A-Za-z]{86}$/)
    expect(sha512Crypt('pw', 'salt', 1000)).not.toBe(sha512Crypt('pw', 'salt'))
  })

  it('makes a fresh 16-character salt each time and rejects bad salts and rounds', () => {
    const a = sha512Crypt('pw')
    const b = sha512Crypt('pw')
    expect(a).toMatch(/^\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$/)
    expect(a).not.toBe(b)
    expect(randomSalt()).toHaveLength(16)
    expect(() => sha512Crypt('pw', 'a$b')).toThrow(/salt/)
    expect(() => sha512Crypt('pw', 'ab', 10)).toThrow(/rounds/)
  })
})
