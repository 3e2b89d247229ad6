/**
 * One user-error model for every rdk command (src/common/errors.ts, src/commands/base.ts): exit 2
 * for usage and configuration errors, 1 for a failed build or run, message + hint on stderr, a stack
 * trace only with --debug or $DEBUG. Runs the real CLI (bin/run.js; needs npm run build).
 */
import {spawnSync} from 'node:child_process'
import {chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {describeError, EXIT_FAILURE, EXIT_USAGE, InterruptedError, UserError} from '../src/common/errors.js'
import {CommandFailedError, ToolMissingError} from '../src/common/exec.js'
import {StageFailedError} from '../src/builder/pipeline.js'
import {PackageResolveError} from '../src/debian/packages.js'

const CLI = resolve('bin/run.js')
const built = existsSync(resolve('dist/commands/base.js'))
const tmp = mkdtempSync(join(tmpdir(), 'rdk-cli-errors-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

function rdk(args: string[], env: Record<string, string | undefined> = {}) {
  const cwd = mkdtempSync(join(tmp, 'cwd-'))
  const r = spawnSync(process.execPath, [CLI, ...args], {encoding: 'utf8', cwd, env: {...process.env, DEBUG: undefined, ...env}, timeout: 60_000})
  return {...r, cwd}
}

const STACK = /\n\s+at .+:\d+:\d+\)?\n/

describe.skipIf(!built)('rdk commands: exit codes, message and hint, stack traces', () => {
  const usage: {cmd: string[]; message: RegExp; hint?: RegExp}[] = [
    {cmd: ['build', '--kernel-arg', 'quiet'], message: /^rdk build: error: --kernel-arg "quiet": expected K=V/},
    {
      cmd: ['build', '--flavor', 'debian'],
      message: /^rdk build: error: flavor 'debian' is not implemented yet; flavors that build today: tiny$/m,
      hint: /^hint: use --flavor tiny$/m,
    },
    {cmd: ['build', '--no-such-flag'], message: /^rdk build: error: Nonexistent flag: --no-such-flag/, hint: /^hint: rdk build --help lists the flags$/m},
    {
      cmd: ['build', '--dry-run', '--element', 'no-such-element'],
      message: /^rdk build: error: unknown element 'no-such-element' \(required by the build spec\)/,
      hint: /^hint: rdk elements lists/m,
    },
    {
      cmd: ['elements', '--elements-path', '/nonexistent/rdk-elements'],
      message: /^rdk elements: error: element path \/nonexistent\/rdk-elements: does not exist$/m,
    },
    {
      cmd: ['iso', '--kernel', '/nonexistent/vmlinuz', '--initrd', '/nonexistent/initrd', '--output', 'x.iso'],
      message: /^rdk iso: error: kernel \/nonexistent\/vmlinuz does not exist/,
    },
    {
      cmd: ['iso', '--kernel', 'k'],
      message: /^rdk iso: error: The following errors occurred:\n\s+Missing required flag initrd/,
      hint: /^hint: rdk iso --help/m,
    },
    {
      cmd: ['boot', '--kernel', '/nonexistent/vmlinuz', '--initrd', '/nonexistent/initrd', '--dry-run'],
      message: /^rdk boot: error: kernel \/nonexistent\/vmlinuz does not exist/,
    },
    {
      cmd: ['agent', '--cmdline', '', '--listen-port', 'abc'],
      message: /^rdk agent: error: ipa-listen-port \(from --listen-port\): expected an integer, got "abc"$/m,
    },
    {cmd: ['inventory', '--lldp-timeout', 'soon'], message: /^rdk inventory: error: ipa-lldp-timeout \(from --lldp-timeout\): expected a number, got "soon"$/m},
  ]
  for (const {cmd, message, hint} of usage) {
    it(`rdk ${cmd.join(' ')} → exit 2, the message${hint ? ' and a hint' : ''}, no stack trace`, () => {
      const r = rdk(cmd)
      expect(r.status, r.stderr).toBe(2)
      expect(r.stderr).toMatch(message)
      if (hint) expect(r.stderr).toMatch(hint)
      expect(r.stderr).not.toMatch(STACK)
      expect(r.stderr).not.toMatch(/internal error/)
      expect(r.stdout).toBe('')
    })
  }

  it('prints the stack trace with --debug or $DEBUG, and still exits 2', () => {
    const withFlag = rdk(['build', '--kernel-arg', 'quiet', '--debug'])
    expect(withFlag.status).toBe(2)
    expect(withFlag.stderr).toMatch(/^rdk build: error: --kernel-arg "quiet"/)
    expect(withFlag.stderr).toMatch(STACK)
    expect(withFlag.stderr).toMatch(/at parseKernelArgs/)
    const withEnv = rdk(['elements', '--elements-path', '/nonexistent/rdk-elements'], {DEBUG: '1'})
    expect(withEnv.status).toBe(2)
    expect(withEnv.stderr).toMatch(STACK)
  })

  it('a build that fails in a stage exits 1 with the stage and the cause, and writes nothing', () => {
    const elements = join(tmp, 'elements')
    mkdirSync(join(elements, 'breaks/root.d'), {recursive: true})
    writeFileSync(join(elements, 'breaks/element.yaml'), 'description: fails in root.d\n')
    writeFileSync(join(elements, 'breaks/root.d/10-fail'), '#!/bin/sh\necho "no space left, pretend" >&2\nexit 3\n')
    chmodSync(join(elements, 'breaks/root.d/10-fail'), 0o755)
    const out = join(tmp, 'out-fail')
    const r = rdk(['build', '--elements-path', elements, '--element', 'breaks', '--output', out, '--cache-dir', join(tmp, 'cache'), '--format', 'initramfs'])
    expect(r.status, r.stderr).toBe(1)
    expect(r.stderr).toMatch(/^rdk build: error: stage root-hooks: hook root\.d\/10-fail of element 'breaks' exited with code 3:\nno space left, pretend$/m)
    expect(r.stderr).not.toMatch(STACK)
    expect(readdirSync(out)).toEqual([])
  })

  it('a missing host tool inside a stage exits 2 and names the Debian package', () => {
    const empty = join(tmp, 'empty-path')
    mkdirSync(empty, {recursive: true})
    const out = join(tmp, 'out-nopath')
    const r = rdk(['build', '--output', out, '--format', 'initramfs'], {PATH: empty})
    expect(r.status, r.stderr).toBe(2)
    expect(r.stderr).toMatch(/^rdk build: error: stage fetch-packages: required program '(\S+)' was not found on PATH: install the Debian package '(\S+)'/m)
    expect(r.stderr).toMatch(/^hint: apt-get install \S+$/m)
    expect(r.stderr).not.toMatch(STACK)
    expect(readdirSync(out)).toEqual([])
  })

  it("an element asking for a package apt does not know exits 2 with the resolver's message and a hint", () => {
    const elements = join(tmp, 'pkg-elements')
    mkdirSync(join(elements, 'wants-nope'), {recursive: true})
    writeFileSync(join(elements, 'wants-nope/element.yaml'), 'description: asks for a package that does not exist\npackages: [rdk-no-such-package]\n')
    const out = join(tmp, 'out-nopkg')
    // The shared package cache (default cache dir): the toolset is resolved from it, no downloads once warm.
    const r = rdk(['build', '--elements-path', elements, '--element', 'wants-nope', '--output', out, '--format', 'initramfs'])
    expect(r.status, r.stderr).toBe(2)
    expect(r.stderr).toMatch(/^rdk build: error: stage fetch-packages: no such Debian package \(or version\) in apt's indexes: rdk-no-such-package/m)
    expect(r.stderr).toMatch(/^hint: check the name \(apt-cache policy NAME\)/m)
    expect(r.stderr).not.toMatch(STACK)
    expect(readdirSync(out)).toEqual([])
  }, 300_000)

  it('rdk build --dry-run lists the stages in order with skip reasons and writes nothing', () => {
    const out = join(tmp, 'out-dry')
    const text = rdk(['build', '--dry-run', '--output', out, '--format', 'initramfs,ipxe'])
    expect(text.status, text.stderr).toBe(0)
    expect(text.stdout).toMatch(/^# rdk build --dry-run: nothing is built or written$/m)
    expect(text.stdout).toMatch(/^formats:\n {2}- initramfs\n {2}- ipxe$/m)
    expect(text.stdout).toMatch(/^# elements \(\d+\): base, /m)
    expect(text.stdout).toMatch(/^ 9\. write-kernel +skip: kernel format not requested/m)
    expect(text.stdout).toMatch(/^12\. make-ipxe +run/m)
    expect(text.stdout).toMatch(/^14\. write-artefacts +run/m)
    const json = rdk(['build', '--dry-run', '--json', '--output', out, '--format', 'initramfs,ipxe'])
    expect(json.status, json.stderr).toBe(0)
    const plan = JSON.parse(json.stdout) as {dryRun: boolean; spec: {formats: string[]}; flavor: string; stages: {name: string; skip: string | null}[]}
    expect(plan.dryRun).toBe(true)
    expect(plan.flavor).toBe('tiny')
    expect(plan.spec.formats).toEqual(['initramfs', 'ipxe'])
    expect(plan.stages.map((s) => s.name)).toEqual([
      'resolve-elements',
      'root-hooks',
      'fetch-packages',
      'fetch-kernel',
      'assemble-tree',
      'add-agent',
      'run-hooks',
      'pack-initramfs',
      'write-kernel',
      'make-iso',
      'make-pxe',
      'make-ipxe',
      'make-bundles',
      'write-artefacts',
    ])
    expect(Object.fromEntries(plan.stages.map((s) => [s.name, s.skip]))).toMatchObject({
      'write-kernel': 'kernel format not requested',
      'make-iso': 'iso not requested',
      'make-ipxe': null,
      'make-bundles': 'no bundle requested',
    })
    expect(existsSync(out)).toBe(false)
  })
})

describe('describeError', () => {
  it('maps every kind of error to its exit code and hint', () => {
    expect(describeError(new UserError('bad', {hint: 'do this'}))).toMatchObject({message: 'bad', hint: 'do this', exitCode: EXIT_USAGE, internal: false})
    expect(describeError(new ToolMissingError('xorriso'))).toMatchObject({exitCode: 2, hint: 'apt-get install xorriso'})
    expect(describeError(new CommandFailedError('xz -d', 1, undefined, '', 'corrupt', false))).toMatchObject({exitCode: EXIT_FAILURE, internal: false})
    expect(describeError(new PackageResolveError("no such Debian package (or version) in apt's indexes: nope"))).toMatchObject({exitCode: 2, internal: false})
    expect(describeError(new InterruptedError('build', 'SIGINT')).exitCode).toBe(130)
    expect(describeError(new InterruptedError('build', 'SIGTERM')).exitCode).toBe(143)
    // A stage wrapper takes the cause's code and hint; a bug inside a stage is internal (exit 1).
    expect(describeError(new StageFailedError('pack-initramfs', new ToolMissingError('zstd')))).toMatchObject({
      message: "stage pack-initramfs: required program 'zstd' was not found on PATH: install the Debian package 'zstd' (apt-get install zstd)",
      exitCode: 2,
      hint: 'apt-get install zstd',
    })
    const bug = describeError(new StageFailedError('assemble-tree', new TypeError("Cannot read properties of undefined (reading 'x')")))
    expect(bug).toMatchObject({exitCode: 1, internal: true})
    expect(bug.stack).toMatch(/caused by: TypeError/)
    expect(describeError('a string')).toMatchObject({message: 'a string', exitCode: 1, internal: true})
  })
})
