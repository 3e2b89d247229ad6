import {describe, expect, it} from 'vitest'
import {bootifMac, ConfigError, parseCmdline, resolveConfig, SETTINGS, flagName} from '../src/agent/config.js'

describe('agent config', () => {
  it('parses kernel command lines like IPA (k=v tokens, first = splits, quotes group)', () => {
    const m = parseCmdline('BOOT_IMAGE=/vmlinuz ro quiet ipa-api-url=http://10.0.0.1:6385 ipa-debug=1 x=a=b sshkey="ssh-ed25519 AAAA me@host"\n')
    expect(m.get('ipa-api-url')).toBe('http://10.0.0.1:6385')
    expect(m.get('x')).toBe('a=b')
    expect(m.get('sshkey')).toBe('ssh-ed25519 AAAA me@host')
    expect(m.has('ro')).toBe(false)
  })

  it('merges defaults < file < cmdline < flags', () => {
    const cfg = resolveConfig({
      file: {path: 'agent.json', data: {'ipa-api-url': 'http://file:6385', listen_port: 1111, 'ipa-lookup-timeout': 30}},
      cmdline: 'ipa-api-url=http://cmdline:6385,http://second:6385 ipa-listen-port=2222 ipa-insecure=1 BOOTIF=01-52-54-00-aa-bb-cc',
      flags: {'listen-port': '3333'},
    })
    expect(cfg.apiUrl).toEqual(['http://cmdline:6385', 'http://second:6385'])
    expect(cfg.listenPort).toBe(3333)
    expect(cfg.lookupTimeout).toBe(30)
    expect(cfg.insecure).toBe(true)
    expect(cfg.bootif).toBe('01-52-54-00-aa-bb-cc')
    expect(cfg.lookupInterval).toBe(1)
    expect(cfg.listenHost).toBe('::')
  })

  it('ignores unknown kernel parameters but rejects unknown file keys and flags', () => {
    expect(() => resolveConfig({cmdline: 'ipa-nosuch=1 console=ttyS0'})).not.toThrow()
    expect(() => resolveConfig({file: {path: 'a.json', data: {'ipa-nosuch': 1}}})).toThrow(/a.json: unknown setting 'ipa-nosuch'/)
    expect(() => resolveConfig({flags: {'no-such': 'x'}})).toThrow(ConfigError)
  })

  it('gives specific errors for bad values', () => {
    expect(() => resolveConfig({cmdline: 'ipa-listen-port=abc'})).toThrow(/ipa-listen-port \(from kernel command line\): expected an integer, got "abc"/)
    expect(() => resolveConfig({cmdline: 'ipa-listen-port=70000'})).toThrow(/0-65535/)
    expect(() => resolveConfig({cmdline: 'ipa-debug=maybe'})).toThrow(/expected a boolean/)
    expect(() => resolveConfig({cmdline: 'ipa-api-url=ftp://x'})).toThrow(/must be http/)
    expect(() => resolveConfig({cmdline: 'ipa-api-url=mdns'})).toThrow(/mDNS/)
    expect(() => resolveConfig({cmdline: 'BOOTIF=zz'})).toThrow(/BOOTIF/)
    expect(() => resolveConfig({flags: {'device-allowlist': 'sda'}})).toThrow(/\/dev paths/)
    expect(() => resolveConfig({file: {path: 'x.json', data: [1]}})).toThrow(/JSON object/)
  })

  it('derives one flag per setting, without the ipa- prefix', () => {
    const names = SETTINGS.map(flagName)
    expect(new Set(names).size).toBe(names.length)
    expect(names).toContain('api-url')
    expect(names).toContain('advertise-host')
    expect(names).toContain('bootif')
    expect(names.every((n) => !n.startsWith('ipa-'))).toBe(true)
  })

  it('normalises BOOTIF', () => {
    expect(bootifMac('01-52-54-00-AA-bb-cc')).toBe('52:54:00:aa:bb:cc')
    expect(bootifMac('52:54:00:aa:bb:cc')).toBe('52:54:00:aa:bb:cc')
    expect(bootifMac('01-52-54')).toBeUndefined()
  })
})
