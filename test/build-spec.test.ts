import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {SpecError} from '../src/builder/errors.js'
import {resolveEpoch} from '../src/artefacts/iso.js'
import {defaultCacheDir} from '../src/common/defaults.js'
import {defaultCacheDir as debianDefaultCacheDir} from '../src/debian/packages.js'
import {
  buildFlagTable,
  DEFAULT_SOURCE_DATE_EPOCH,
  kernelCmdline,
  mirrorFromApt,
  parseAuthorizedKeys,
  resolveSpec,
  SPEC_SETTINGS,
  type SpecSources,
} from '../src/builder/spec.js'

const tmp = mkdtempSync(join(tmpdir(), 'rdk-spec-test-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

let n = 0
/** A fresh working directory with an apt root that has no sources (default mirror). */
function workdir(): string {
  const d = join(tmp, `w${n++}`)
  mkdirSync(d, {recursive: true})
  return d
}

const ED25519 = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFr4bTgCdHxj4VGe6v4F3vTfT9rvWbWJtmhQ0K7m5F9K alice@example'
const RSA_BAD = 'ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIFr4bTgCdHxj4VGe6v4F3vTfT9rvWbWJtmhQ0K7m5F9K mislabelled'

function env(cwd: string, extra: Record<string, string> = {}): SpecSources['env'] {
  return {cwd, home: join(cwd, 'home'), env: {...extra}, aptRoot: join(cwd, 'no-apt')}
}

async function spec(cwd: string, yaml?: string, flags: Record<string, unknown> = {}, extraEnv: Record<string, string> = {}) {
  let configFile: string | undefined
  if (yaml !== undefined) {
    configFile = join(cwd, 'rdk.yaml')
    writeFileSync(configFile, yaml)
  }
  return (await resolveSpec({configFile, flags, env: env(cwd, extraEnv)})).spec
}

async function specError(cwd: string, yaml?: string, flags: Record<string, unknown> = {}): Promise<string> {
  try {
    await spec(cwd, yaml, flags)
  } catch (err) {
    expect(err).toBeInstanceOf(SpecError)
    return (err as Error).message
  }
  throw new Error('expected a SpecError')
}

describe('build spec defaults', () => {
  it('builds the tiny flavor with documented defaults when given nothing', async () => {
    const cwd = workdir()
    const {spec: s, configOrigin} = await resolveSpec({env: env(cwd)})
    expect(configOrigin).toBe('<built-in default config>')
    expect(s).toMatchObject({
      flavor: 'tiny',
      name: 'rdk-tiny',
      output: join(cwd, 'out'),
      elements: [],
      elementPaths: [],
      kernelArgs: {},
      compress: 'xz',
      nodeIcu: 'en',
      kernelModules: [],
      formats: ['kernel', 'initramfs'],
      sourceDateEpoch: DEFAULT_SOURCE_DATE_EPOCH,
      cacheDir: join(cwd, 'home', '.cache', 'rdk'),
      debianMirror: 'http://deb.debian.org/debian',
      debianSuite: 'bookworm',
      authorizedKeys: [],
    })
  })

  it('takes SOURCE_DATE_EPOCH and XDG_CACHE_HOME from the environment, never the clock', async () => {
    const cwd = workdir()
    const s = await spec(cwd, undefined, {}, {SOURCE_DATE_EPOCH: '1234567890', XDG_CACHE_HOME: '/var/cache/x'})
    expect(s.sourceDateEpoch).toBe(1234567890)
    expect(s.cacheDir).toBe('/var/cache/x/rdk')
    await expect(spec(cwd, undefined, {}, {SOURCE_DATE_EPOCH: 'yesterday'})).rejects.toThrow(/SOURCE_DATE_EPOCH must be a whole number/)
  })

  it('has one SOURCE_DATE_EPOCH default and parser, shared with rdk iso / the PXE tree', async () => {
    const saved = process.env.SOURCE_DATE_EPOCH
    try {
      delete process.env.SOURCE_DATE_EPOCH
      expect(resolveEpoch()).toBe(DEFAULT_SOURCE_DATE_EPOCH)
      expect(resolveEpoch(7)).toBe(7)
      process.env.SOURCE_DATE_EPOCH = '1234567890'
      expect(resolveEpoch()).toBe(1234567890)
      process.env.SOURCE_DATE_EPOCH = 'yesterday' // was silently ignored by rdk iso before
      expect(() => resolveEpoch()).toThrow(/SOURCE_DATE_EPOCH must be a whole number of seconds, got "yesterday"/)
    } finally {
      if (saved === undefined) delete process.env.SOURCE_DATE_EPOCH
      else process.env.SOURCE_DATE_EPOCH = saved
    }
  })

  it('has one cache-dir default, the same as the Debian layer and rdk boot use: $RDK_CACHE_DIR first', async () => {
    const cwd = workdir()
    const both = {RDK_CACHE_DIR: '/srv/rdk-cache', XDG_CACHE_HOME: '/var/cache/x'}
    expect((await spec(cwd, undefined, {}, both)).cacheDir).toBe('/srv/rdk-cache')
    expect(defaultCacheDir(both, '/home/u')).toBe('/srv/rdk-cache')
    expect((await spec(cwd, undefined, {}, {RDK_CACHE_DIR: 'rel-cache'})).cacheDir).toBe(join(cwd, 'rel-cache'))
    expect(defaultCacheDir({RDK_CACHE_DIR: '', XDG_CACHE_HOME: ''}, '/home/u')).toBe('/home/u/.cache/rdk')
    expect(debianDefaultCacheDir).toBe(defaultCacheDir)
    expect((await spec(cwd, 'cacheDir: /from/file\n', {}, both)).cacheDir).toBe('/from/file')
  })

  it('picks up ./rdk.yaml when there is no --config', async () => {
    const cwd = workdir()
    writeFileSync(join(cwd, 'rdk.yaml'), 'name: implicit\n')
    const r = await resolveSpec({env: env(cwd)})
    expect(r.spec.name).toBe('implicit')
    expect(r.configOrigin).toBe(join(cwd, 'rdk.yaml'))
  })

  it("reads the default Debian mirror from the machine's apt sources (deb822 and one-line)", async () => {
    const root = workdir()
    mkdirSync(join(root, 'etc/apt/sources.list.d'), {recursive: true})
    writeFileSync(
      join(root, 'etc/apt/sources.list.d/debian.sources'),
      'Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\n' +
        'Types: deb\nURIs: http://mirror.example.org/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n',
    )
    writeFileSync(join(root, 'etc/apt/sources.list.d/node.list'), 'deb https://deb.nodesource.com/node_20.x nodistro main\n')
    expect(await mirrorFromApt(root)).toBe('http://mirror.example.org/debian')
    const old = workdir()
    mkdirSync(join(old, 'etc/apt'), {recursive: true})
    writeFileSync(join(old, 'etc/apt/sources.list'), '# comment\ndeb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\n')
    expect(await mirrorFromApt(old)).toBe('http://ftp.de.debian.org/debian')
    expect(await mirrorFromApt(workdir())).toBe('http://deb.debian.org/debian')
  })
})

describe('config file and flags', () => {
  it('reads every field from YAML, resolving paths against the config file', async () => {
    const cwd = workdir()
    mkdirSync(join(cwd, 'my-elements'))
    mkdirSync(join(cwd, 'managers'))
    writeFileSync(join(cwd, 'id.pub'), `# my key\n${ED25519}\n`)
    const s = await spec(
      cwd,
      `flavor: tiny
name: lab
output: build/out
elements: [tools, extra]
elementPaths: [./my-elements]
kernelArgs: {console: ttyS0, quiet: null, ipa-debug: 1}
sshKeys: [id.pub]
hardwareManagers: [managers]
compress: xz
formats: initramfs
sourceDateEpoch: 42
cacheDir: ~/cache
debianMirror: http://mirror.local/debian/
debianSuite: trixie
`,
    )
    expect(s).toMatchObject({
      name: 'lab',
      output: join(cwd, 'build/out'),
      elements: ['tools', 'extra'],
      elementPaths: [join(cwd, 'my-elements')],
      kernelArgs: {console: 'ttyS0', quiet: null, 'ipa-debug': '1'},
      sshKeys: [join(cwd, 'id.pub')],
      hardwareManagers: [join(cwd, 'managers')],
      compress: 'xz',
      formats: ['initramfs'],
      sourceDateEpoch: 42,
      cacheDir: join(cwd, 'home', 'cache'),
      debianMirror: 'http://mirror.local/debian',
      debianSuite: 'trixie',
      authorizedKeys: [ED25519],
    })
  })

  it('lets flags win: scalars replace, --element adds, --kernel-arg sets a key, --format replaces', async () => {
    const cwd = workdir()
    const s = await spec(cwd, 'name: from-file\nelements: [a]\nkernelArgs: {console: tty0, quiet: null}\nformats: [kernel, initramfs]\ncompress: xz\n', {
      name: 'from-flag',
      element: ['b,c', 'a'],
      'kernel-arg': ['console=ttyS0,115200', 'ipa-api-url=http://x/?a=b'],
      format: ['initramfs'],
      compress: 'zstd',
      output: 'rel/out',
    })
    expect(s.name).toBe('from-flag')
    expect(s.elements).toEqual(['a', 'b', 'c'])
    expect(s.kernelArgs).toEqual({console: 'ttyS0,115200', quiet: null, 'ipa-api-url': 'http://x/?a=b'})
    expect(s.formats).toEqual(['initramfs'])
    expect(s.compress).toBe('zstd')
    expect(s.output).toBe(join(cwd, 'rel/out'))
  })

  it('derives the name default from the flavor', async () => {
    expect((await spec(workdir(), 'flavor: debian\n')).name).toBe('rdk-debian')
  })

  it('has one flag per setting, all distinct, with help naming the YAML key and default', () => {
    const table = buildFlagTable()
    expect(table.map((f) => f.setting.key)).toEqual(SPEC_SETTINGS.map((s) => s.key))
    expect(new Set(table.map((f) => f.name)).size).toBe(table.length)
    for (const f of ['flavor', 'output', 'name', 'element', 'elements-path', 'kernel-arg', 'ssh-key', 'hardware-manager', 'compress', 'format']) {
      expect(table.map((x) => x.name)).toContain(f)
    }
    expect(table.find((f) => f.name === 'kernel-arg')!).toMatchObject({multiple: true})
    expect(table.find((f) => f.name === 'compress')!.help).toMatch(/\[gzip\|xz\|zstd\|none\].*rdk\.yaml: compress; default: xz/)
  })

  it('renders kernel arguments, quoting values with spaces', () => {
    expect(kernelCmdline({console: 'ttyS0,115200', quiet: null, 'ipa-x': 'a b'})).toBe('console=ttyS0,115200 quiet ipa-x="a b"')
  })
})

describe('spec errors', () => {
  it('names an unknown YAML key with its line and a suggestion', async () => {
    const msg = await specError(workdir(), 'flavor: tiny\n# comment\n  \nkernelArg:\n  console: ttyS0\n')
    expect(msg).toMatch(/rdk\.yaml:4:1: unknown key 'kernelArg' \(did you mean 'kernelArgs'\?\); known keys: flavor, name/)
  })

  it('suggests the YAML key when a flag name is used in the file', async () => {
    expect(await specError(workdir(), 'kernel-arg: {a: b}\n')).toMatch(/unknown key 'kernel-arg' \(did you mean 'kernelArgs'\?\)/)
  })

  it('reports wrong types with the position and what was found', async () => {
    expect(await specError(workdir(), 'elements: {a: 1}\n')).toMatch(/rdk\.yaml:1:11: elements: expected a list of strings, got a mapping/)
    expect(await specError(workdir(), 'name: 12\n')).toMatch(/rdk\.yaml:1:7: name: expected a string, got the number 12/)
    expect(await specError(workdir(), 'compress: lz4\n')).toMatch(/compress: 'lz4' is not one of gzip, xz, zstd, none/)
    expect(await specError(workdir(), 'ipxeBaseUrl: ftp://x/\n')).toMatch(/ipxeBaseUrl: 'ftp:\/\/x\/' is not an http:\/\/ or https:\/\/ URL/)
    expect(await specError(workdir(), 'formats: [initramfs, isoo]\n')).toMatch(/'isoo' is not one of .*\(did you mean 'iso'\?\)/)
    expect(await specError(workdir(), 'sourceDateEpoch: -5\n')).toMatch(/sourceDateEpoch: must be between 0 and 4294967295/)
    expect(await specError(workdir(), 'sourceDateEpoch: soon\n')).toMatch(/sourceDateEpoch: expected a whole number, got the string "soon"/)
    expect(await specError(workdir(), 'kernelArgs: {console: [a]}\n')).toMatch(/kernelArgs\.console: expected a string or number/)
    expect(await specError(workdir(), '- just\n- a list\n')).toMatch(/must be a mapping of settings/)
  })

  it('reports YAML syntax errors with a position', async () => {
    expect(await specError(workdir(), 'elements: [a, b\nname: x\n')).toMatch(/rdk\.yaml:\d+:\d+: invalid YAML/)
  })

  it('rejects --kernel-arg without =', async () => {
    expect(await specError(workdir(), undefined, {'kernel-arg': ['quiet']})).toMatch(/--kernel-arg "quiet": expected K=V/)
    expect(await specError(workdir(), undefined, {'kernel-arg': ['=x']})).toMatch(/expected K=V/)
    expect(await specError(workdir(), 'kernelArgs: ["a=1", "nokey"]\n')).toMatch(/kernelArgs entry "nokey": expected K=V/)
    expect(await specError(workdir(), undefined, {'kernel-arg': ['a=has"quote']})).toMatch(/must not contain '"'/)
  })

  it('rejects missing and non-key SSH key files', async () => {
    const cwd = workdir()
    expect(await specError(cwd, undefined, {'ssh-key': ['nope.pub']})).toMatch(new RegExp(`sshKeys: cannot read ${join(cwd, 'nope.pub')}: no such file`))
    writeFileSync(join(cwd, 'notes.txt'), 'hello world\n')
    expect(await specError(cwd, undefined, {'ssh-key': ['notes.txt']})).toMatch(/notes\.txt:1: not an SSH public key line/)
    writeFileSync(join(cwd, 'id'), '-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n')
    expect(await specError(cwd, undefined, {'ssh-key': ['id']})).toMatch(/this is a private key; give the public key/)
    writeFileSync(join(cwd, 'bad.pub'), `${RSA_BAD}\n`)
    expect(await specError(cwd, undefined, {'ssh-key': ['bad.pub']})).toMatch(/bad\.pub:1: the key data does not hold a ssh-rsa key/)
    writeFileSync(join(cwd, 'empty.pub'), '# nothing\n\n')
    expect(await specError(cwd, undefined, {'ssh-key': ['empty.pub']})).toMatch(/no SSH public keys in it/)
  })

  it('accepts authorized_keys options and several keys', () => {
    const text = `${ED25519}\nfrom="10.0.0.0/8",command="echo hi there" ${ED25519.replace('alice', 'bob')}\n`
    expect(parseAuthorizedKeys(text, 'k')).toHaveLength(2)
  })

  it('checks paths: element paths, hardware managers, output', async () => {
    const cwd = workdir()
    expect(await specError(cwd, undefined, {'elements-path': ['missing']})).toMatch(/elementPaths: .*missing does not exist/)
    writeFileSync(join(cwd, 'manager.py'), '')
    expect(await specError(cwd, undefined, {'hardware-manager': ['manager.py']})).toMatch(/must be a \.js or \.mjs module/)
    writeFileSync(join(cwd, 'afile'), '')
    expect(await specError(cwd, undefined, {output: 'afile'})).toMatch(/output: .*afile exists and is not a directory/)
    expect(await specError(cwd, undefined, {name: '../evil'})).toMatch(/name: '\.\.\/evil' must be a file name/)
    expect(await specError(cwd, undefined, {'debian-mirror': 'ftp://x'})).toMatch(/debianMirror: 'ftp:\/\/x' must be an http/)
    expect(await specError(cwd, undefined, {element: ['Bad Name']})).toMatch(/not a valid element name/)
  })

  it('names a missing --config file', async () => {
    const cwd = workdir()
    await expect(resolveSpec({configFile: 'nope.yaml', env: env(cwd)})).rejects.toThrow(/cannot read config file nope\.yaml: no such file/)
  })
})

describe('docs/build.md', () => {
  it('documents every setting (YAML key and flag) and points at the flavor file for the stages', async () => {
    const {readFileSync} = await import('node:fs')
    const {tiny} = await import('../src/flavors/tiny/index.js')
    const doc = readFileSync('docs/build.md', 'utf8')
    for (const s of SPEC_SETTINGS) {
      expect(doc, s.key).toContain(`| \`${s.key}\` | \`--${s.flag}`)
    }
    expect(doc).toContain('[`src/flavors/tiny/index.ts`](../src/flavors/tiny/index.ts)')
    // No second hand-kept stage table: the docs name stages, the flavor file orders them.
    expect(doc).not.toMatch(/^\| stage \| does \|$/m)
    for (const stage of tiny.stages!) expect(doc, stage.name).toContain(`\`${stage.name}\``)
  })
})

describe('ipxeBaseUrl', () => {
  it('comes from the file or flag, else $RDK_IPXE_BASE_URL, else empty', async () => {
    const cwd = workdir()
    expect((await spec(cwd)).ipxeBaseUrl).toBe('')
    expect((await spec(cwd, undefined, {}, {RDK_IPXE_BASE_URL: 'http://env.example/rdk/'})).ipxeBaseUrl).toBe('http://env.example/rdk/')
    expect((await spec(cwd, 'ipxeBaseUrl: https://file.example/r/\n', {}, {RDK_IPXE_BASE_URL: 'http://env.example/'})).ipxeBaseUrl).toBe(
      'https://file.example/r/',
    )
  })
})
