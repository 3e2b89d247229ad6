import {spawn, spawnSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {pathToFileURL} from 'node:url'
import {gunzipSync} from 'node:zlib'
import {afterAll, describe, expect, it} from 'vitest'
import type {Compression} from '../src/builder/compress.js'
import {parseCpio} from '../src/builder/cpio.js'
import {createDefaultRegistry} from '../src/builder/flavors.js'
import {runBuild, StageFailedError, type BuildResult} from '../src/builder/pipeline.js'
import type {StageRegistry} from '../src/builder/registry.js'
import {finishSpec, type BuildSpec} from '../src/builder/spec.js'

const FIXTURES = resolve('test/fixtures/elements')
const EPOCH = 1650000000
const tmp = mkdtempSync(join(tmpdir(), 'rdk-pipeline-test-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

let n = 0
const freshDir = () => {
  const d = join(tmp, `b${n++}`)
  mkdirSync(d, {recursive: true})
  return d
}

/** The default registry, but the tiny flavor starts from no elements (the tests pick their own). */
function testRegistry(extra?: (r: StageRegistry) => void): StageRegistry {
  const r = createDefaultRegistry()
  r.updateFlavor('tiny', {defaultElements: []})
  extra?.(r)
  return r
}

async function testSpec(dir: string, over: Partial<BuildSpec> = {}): Promise<BuildSpec> {
  return finishSpec(
    {elements: ['hello'], elementPaths: [FIXTURES], output: join(dir, 'out'), cacheDir: join(dir, 'cache'), formats: ['initramfs'], sourceDateEpoch: EPOCH, ...over},
    {env: {}, cwd: dir, aptRoot: dir},
  )
}

async function build(spec: BuildSpec, registry = testRegistry()): Promise<{result: BuildResult; log: string[]}> {
  const log: string[] = []
  const result = await runBuild(spec, {registry, loadPlugins: false, handleSignals: false, log: (l) => log.push(l)})
  return {result, log}
}

async function buildError(spec: BuildSpec, registry = testRegistry()): Promise<Error> {
  try {
    await build(spec, registry)
  } catch (err) {
    return err as Error
  }
  throw new Error('expected the build to fail')
}

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')
const listing = (dir: string) => (existsSync(dir) ? readdirSync(dir).sort() : [])

function decompress(kind: Compression, data: Buffer): Buffer {
  if (kind === 'gzip') return gunzipSync(data)
  if (kind === 'none') return data
  return spawnSync(kind, ['-d', '-c'], {input: data, maxBuffer: 1 << 28}).stdout
}

describe('reproducible builds', () => {
  for (const compress of ['gzip', 'xz', 'zstd', 'none'] as Compression[]) {
    it(`${compress}: two builds in different places give byte-identical artefacts`, async () => {
      const a = await testSpec(freshDir(), {compress})
      const b = await testSpec(freshDir(), {compress})
      const ra = (await build(a)).result
      const rb = (await build(b)).result
      const ia = join(a.output, 'rdk-tiny.initramfs')
      const ib = join(b.output, 'rdk-tiny.initramfs')
      expect(sha(ia)).toBe(sha(ib))
      expect(readFileSync(join(a.output, 'rdk-tiny.manifest.json')).equals(readFileSync(join(b.output, 'rdk-tiny.manifest.json')))).toBe(true)
      expect(ra.treeDigest).toBe(rb.treeDigest)
      expect(rb.cache.hits).toBe(0) // separate caches: really built twice
      const entries = parseCpio(decompress(compress, readFileSync(ia)))
      const by = Object.fromEntries(entries.map((e) => [e.name, e]))
      expect(by['etc/motd']!.data.toString()).toMatch(/^Welcome to rdk-tiny \(tiny\), built from base-lite, hello by hello\./)
      expect(by['etc/hook-marker']!.data.toString()).toBe('base-lite hello\n')
      expect(by['etc/build-epoch']!.data.toString()).toBe(`${EPOCH}\n`)
      expect(by['usr/share/hello/b.txt']).toBeUndefined()
      expect(entries.every((e) => e.mtime === EPOCH)).toBe(true)
    })
  }

  it('changes the output when the epoch changes (and only then is the tree the same)', async () => {
    const a = await testSpec(freshDir())
    const b = await testSpec(freshDir(), {sourceDateEpoch: EPOCH + 1})
    const ra = (await build(a)).result
    const rb = (await build(b)).result
    expect(ra.artefacts[0]!.sha256).not.toBe(rb.artefacts[0]!.sha256)
  })
})

describe('build result and manifest', () => {
  it('reports contributors and the initramfs layers, whose compressed sizes add up to the initramfs', async () => {
    const spec = await testSpec(freshDir(), {compress: 'xz'})
    const r = (await build(spec)).result
    expect(r.layers.map((l) => l.name)).toEqual(['dirs', 'image'])
    const initramfs = r.artefacts.find((a) => a.kind === 'initramfs')!
    expect(r.layers.reduce((n, l) => n + l.compressed, 0)).toBe(initramfs.size)
    expect(r.contributions.map((c) => c.name)).toEqual(expect.arrayContaining(['hello']))
    expect(r.contributions.reduce((n, c) => n + c.bytes, 0)).toBe(r.sizes.reduce((n, x) => n + x.bytes, 0))
  })

  it('reports artefacts with size and sha256, stage timings and per-element sizes', async () => {
    const spec = await testSpec(freshDir(), {kernelArgs: {console: 'ttyS0'}})
    const {result, log} = await build(spec)
    expect(result.artefacts.map((a) => a.file)).toEqual(['rdk-tiny.initramfs', 'rdk-tiny.manifest.json'])
    for (const a of result.artefacts) {
      expect(a.sha256).toBe(sha(a.path))
      expect(a.size).toBe(statSync(a.path).size)
    }
    expect(result.stages.map((s) => s.name)).toEqual([
      'resolve-elements',
      'root-hooks',
      'fetch-packages',
      'fetch-kernel',
      'assemble-tree',
      'run-hooks',
      'pack-initramfs',
      'write-kernel',
      'make-iso',
      'make-pxe',
      'make-ipxe',
      'make-bundles',
      'write-artefacts',
    ])
    expect(result.stages.every((s) => typeof s.ms === 'number' && s.ms >= 0)).toBe(true)
    expect(log.filter((l) => /^\[\d+\/13\] /.test(l))).toHaveLength(13)
    const hello = result.elements.find((e) => e.name === 'hello')!
    expect(hello.bytes).toBeGreaterThan(0)
    expect(hello.origin).toBe('user')
    const manifest = JSON.parse(readFileSync(join(spec.output, 'rdk-tiny.manifest.json'), 'utf8'))
    expect(manifest.kernelCmdline).toBe('root=/dev/ram0 console=ttyS0') // the tiny flavor's own argument first
    expect(manifest.elements.map((e: {name: string}) => e.name)).toEqual(['base-lite', 'hello'])
    expect(manifest.artefacts).toEqual([{file: 'rdk-tiny.initramfs', kind: 'initramfs', size: result.artefacts[0]!.size, sha256: result.artefacts[0]!.sha256}])
    expect(manifest.spec.output).toBeUndefined() // host-only fields stay out: the manifest is reproducible
    expect(manifest.tree.digest).toBe(result.treeDigest)
  })

  it('writes <name>.kernel from the kernel a plug-in stage provides', async () => {
    const dir = freshDir()
    const vmlinuz = join(dir, 'vmlinuz')
    writeFileSync(vmlinuz, 'not really a kernel')
    const registry = testRegistry((r) =>
      r.registerStage('tiny', {name: 'fake-kernel', description: 'test', run: async (ctx) => void (ctx.kernel = {path: vmlinuz, version: '6.1.0-test'})}, {replace: 'fetch-kernel'}),
    )
    const spec = await testSpec(dir, {formats: ['kernel', 'initramfs'], name: 'lab'})
    const {result} = await build(spec, registry)
    expect(result.artefacts.map((a) => a.file)).toEqual(['lab.initramfs', 'lab.kernel', 'lab.manifest.json'])
    expect(readFileSync(join(spec.output, 'lab.kernel'), 'utf8')).toBe('not really a kernel')
    expect(JSON.parse(readFileSync(join(spec.output, 'lab.manifest.json'), 'utf8')).kernel).toEqual({version: '6.1.0-test', source: null})
  })
})

describe('atomic outputs', () => {
  it('leaves the output directory as it was when a late stage fails', async () => {
    let workDir = ''
    const registry = testRegistry((r) =>
      r.registerStage('tiny', {
        name: 'explode',
        description: 'fails after the initramfs was written',
        run: async (ctx) => {
          workDir = ctx.workDir
          expect(readdirSync(ctx.spec.output).some((f) => f.includes('.rdk-tmp-'))).toBe(true) // something half-done exists
          throw new Error('boom')
        },
      }),
    )
    const spec = await testSpec(freshDir())
    mkdirSync(spec.output, {recursive: true})
    writeFileSync(join(spec.output, 'rdk-tiny.initramfs'), 'previous build')
    const err = await buildError(spec, registry)
    expect(err).toBeInstanceOf(StageFailedError)
    expect((err as StageFailedError).stage).toBe('explode')
    expect(err.message).toBe('stage explode: boom')
    expect(listing(spec.output)).toEqual(['rdk-tiny.initramfs'])
    expect(readFileSync(join(spec.output, 'rdk-tiny.initramfs'), 'utf8')).toBe('previous build')
    expect(existsSync(workDir)).toBe(false)
  })

  it('writes nothing when a hook fails, and says which hook', async () => {
    const spec = await testSpec(freshDir(), {elements: ['failing-hook']})
    const err = await buildError(spec)
    expect(err).toBeInstanceOf(StageFailedError)
    expect((err as StageFailedError).userFacing).toBe(true)
    expect(err.message).toMatch(/^stage run-hooks: hook finalise\.d\/50-fail of element 'failing-hook' exited with code 3/)
    expect(listing(spec.output)).toEqual([])
  })

  it('removes temporary files left by a build that was killed outright', async () => {
    const spec = await testSpec(freshDir())
    mkdirSync(spec.output, {recursive: true})
    const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], {encoding: 'utf8'}).stdout.trim()
    const stale = `.rdk-tiny.initramfs.rdk-tmp-${dead}-0123abcd`
    writeFileSync(join(spec.output, stale), 'half')
    const {log} = await build(spec)
    expect(listing(spec.output)).toEqual(['rdk-tiny.initramfs', 'rdk-tiny.manifest.json'])
    expect(log.join('\n')).toContain(stale)
  })

  const dist = resolve('dist/builder/pipeline.js')
  const cases = [
    {signal: 'SIGTERM', code: 143, where: 'after pack-initramfs (a temporary artefact exists)'},
    {signal: 'SIGINT', code: 130, where: 'while a cache entry is being produced'},
  ] as const
  for (const {signal, code, where} of cases) {
    it.skipIf(!existsSync(dist))(`${signal} ${where} removes partial outputs, cache entries and the work directory (needs npm run build)`, async () => {
      const dir = freshDir()
      const driver = join(dir, 'driver.mjs')
      const url = (p: string) => pathToFileURL(resolve(p)).href
      const inCache = signal === 'SIGINT'
      writeFileSync(
        driver,
        `import {createDefaultRegistry} from '${url('dist/builder/flavors.js')}'
import {finishSpec} from '${url('dist/builder/spec.js')}'
import {runBuild} from '${url('dist/builder/pipeline.js')}'
const r = createDefaultRegistry()
r.updateFlavor('tiny', {defaultElements: []})
const hang = (ctx) => new Promise(() => {
  process.stdout.write('READY ' + ctx.workDir + '\\n')
  setInterval(() => {}, 1000)
})
r.registerStage('tiny', {name: 'wait', description: 'hangs', run: ${inCache ? "(ctx) => ctx.cache.directory('slow', {x: 1}, () => hang(ctx))" : 'hang'}}, {after: 'pack-initramfs'})
const spec = await finishSpec(${JSON.stringify({elements: ['hello'], elementPaths: [FIXTURES], output: join(dir, 'out'), cacheDir: join(dir, 'cache'), formats: ['initramfs']})}, {env: {}})
await runBuild(spec, {registry: r, loadPlugins: false, log: (l) => process.stderr.write(l + '\\n')})
`,
      )
      const child = spawn(process.execPath, [driver], {stdio: ['ignore', 'pipe', 'pipe']})
      let stderr = ''
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
      const workDir = await new Promise<string>((res, rej) => {
        let out = ''
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString()
          const m = /READY (\S+)\n/.exec(out)
          if (m) res(m[1]!)
        })
        child.on('exit', () => rej(new Error(`driver exited early: ${stderr}`)))
      })
      expect(listing(join(dir, 'out')).some((f) => f.startsWith('.rdk-tiny.initramfs.rdk-tmp-'))).toBe(true)
      if (inCache) expect(listing(join(dir, 'cache/slow')).some((f) => f.includes('.tmp-'))).toBe(true)
      expect(existsSync(workDir)).toBe(true)
      const exited = new Promise<number | null>((res) => child.on('exit', (c) => res(c)))
      child.kill(signal)
      expect(await exited).toBe(code)
      expect(listing(join(dir, 'out'))).toEqual([])
      expect(listing(join(dir, 'cache/slow'))).toEqual([])
      expect(existsSync(workDir)).toBe(false)
      expect(stderr).toMatch(new RegExp(`interrupted by ${signal}`))
    })
  }

  it('removes half-written cache entries left by a build that was killed outright', async () => {
    const spec = await testSpec(freshDir())
    const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], {encoding: 'utf8'}).stdout.trim()
    const stale = join(spec.cacheDir, 'initramfs', `0123.tmp-${dead}-89abcdef`)
    mkdirSync(stale, {recursive: true})
    const {log} = await build(spec)
    expect(existsSync(stale)).toBe(false)
    expect(log.join('\n')).toMatch(/removed 1 half-written cache entry/)
  })
})

describe('clear errors', () => {
  it('refuses flavors and formats that are not implemented yet, before doing anything', async () => {
    const dir = freshDir()
    await expect(build(await testSpec(dir, {flavor: 'debian'}))).rejects.toThrow("flavor 'debian' is not implemented yet; flavors that build today: tiny")
    // iso is implemented (src/artefacts), but this registry has no kernel stage: a clear error, no output.
    await expect(build(await testSpec(dir, {formats: ['initramfs', 'iso']}))).rejects.toThrow(/stage fetch-kernel: flavor 'tiny' has no kernel stage registered yet, so formats iso cannot be built/)
    expect(listing(join(dir, 'out'))).toEqual([])
  })

  it('says the kernel and package stages are placeholders until the flavor registers them', async () => {
    const dir = freshDir()
    expect((await buildError(await testSpec(dir, {formats: ['kernel', 'initramfs']}))).message).toMatch(
      /^stage fetch-kernel: flavor 'tiny' has no kernel stage registered yet, so formats kernel cannot be built; use --format initramfs/,
    )
    const pk = join(dir, 'pk')
    mkdirSync(join(pk, 'wants-packages'), {recursive: true})
    writeFileSync(join(pk, 'wants-packages/element.yaml'), 'packages: [busybox, kmod]\n')
    expect((await buildError(await testSpec(dir, {elements: ['wants-packages'], elementPaths: [pk]}))).message).toMatch(
      /^stage fetch-packages: element wants-packages needs Debian packages \(busybox, kmod\), but flavor 'tiny' has no package stage registered yet/,
    )
  })

  it('surfaces a missing compressor as the Debian package to install', async () => {
    // elements without hooks: with an empty PATH the hooks could not run their tools either
    const spec = await testSpec(freshDir(), {compress: 'zstd', elements: ['needs-fs', 'base-lite']})
    const path = process.env.PATH
    process.env.PATH = join(tmp, 'empty-path')
    let err: Error
    try {
      err = await buildError(spec)
    } finally {
      process.env.PATH = path
    }
    expect(err).toBeInstanceOf(StageFailedError)
    expect((err as StageFailedError).userFacing).toBe(true)
    expect(err.message).toMatch(/^stage pack-initramfs: required program 'zstd' was not found on PATH: install the Debian package 'zstd'/)
  })

  it('refuses a stage registered after write-artefacts and duplicate stage names', () => {
    const r = testRegistry()
    const s = {name: 'late', description: '', run: async () => {}}
    expect(() => r.registerStage('tiny', s, {after: 'write-artefacts'})).toThrow(/nothing may run after write-artefacts/)
    expect(() => r.registerStage('tiny', {...s, name: 'assemble-tree'})).toThrow(/already registered/)
    expect(() => r.registerStage('tiny', s, {after: 'nope'})).toThrow(/no stage 'nope'/)
    r.registerStage('tiny', s)
    expect(r.stages('tiny').map((x) => x.name).slice(-2)).toEqual(['late', 'write-artefacts'])
  })
})

describe('cache', () => {
  function dirDigest(dir: string): string {
    const h = createHash('sha256')
    const walk = (d: string) => {
      for (const name of readdirSync(d).sort()) {
        const p = join(d, name)
        if (statSync(p).isDirectory()) walk(p)
        else h.update(`${p.slice(dir.length)}\0`).update(readFileSync(p))
      }
    }
    walk(dir)
    return h.digest('hex')
  }

  it('reuses the compressed initramfs when the tree is unchanged, rebuilds it when an element changes', async () => {
    const dir = freshDir()
    const elements = join(dir, 'elements')
    cpSync(FIXTURES, elements, {recursive: true})
    const spec = await testSpec(dir, {elementPaths: [elements], compress: 'xz'})
    const first = (await build(spec)).result
    const second = (await build(spec)).result
    expect(second.stages.find((s) => s.name === 'pack-initramfs')!.note).toMatch(/^reused from cache \(2 layers/)
    expect(second.cache.hits).toBe(2) // the dirs layer and the image layer
    expect(second.artefacts[0]!.sha256).toBe(first.artefacts[0]!.sha256)
    writeFileSync(join(elements, 'hello/hello.txt'), 'edited\n')
    const third = (await build(spec)).result
    // Only the layer holding hello.txt is packed again; the directories' layer comes from the cache.
    expect(third.stages.find((s) => s.name === 'pack-initramfs')!.note).toMatch(/^2 layers, 1 from cache; .* dirs .*\(cached\), image /)
    expect(third.artefacts[0]!.sha256).not.toBe(first.artefacts[0]!.sha256)
    const entries = parseCpio(decompress('xz', readFileSync(join(spec.output, 'rdk-tiny.initramfs'))))
    expect(entries.find((e) => e.name === 'etc/hello.txt')?.data.toString()).toMatch(/^edited\n/)
  })

  it('keeps per-element stage outputs: touching one element redoes only its part', async () => {
    const dir = freshDir()
    const elements = join(dir, 'elements')
    cpSync(FIXTURES, elements, {recursive: true})
    const produced: string[] = []
    const registry = testRegistry((r) =>
      r.registerStage(
        'tiny',
        {
          name: 'fake-packages',
          description: 'per-element fragments through ctx.cache.fragment',
          run: async (ctx) => {
            for (const el of ctx.elements) {
              const frag = await ctx.cache.fragment('test-packages', {element: el.name, content: dirDigest(el.dir)}, ctx.tree, async (t) => {
                produced.push(el.name)
                t.addFile(`/opt/${el.name}/payload`, `expensive output for ${el.name} ${dirDigest(el.dir)}\n`, {source: el.name})
              })
              ctx.tree.merge(frag.tree)
            }
          },
        },
        {replace: 'fetch-packages'},
      ),
    )
    const spec = await testSpec(dir, {elementPaths: [elements]})
    const first = (await build(spec, registry)).result
    expect(produced).toEqual(['base-lite', 'hello'])
    const again = (await build(spec, registry)).result
    expect(produced).toEqual(['base-lite', 'hello'])
    expect(again.artefacts[0]!.sha256).toBe(first.artefacts[0]!.sha256)
    writeFileSync(join(elements, 'hello/hello.txt'), 'touched\n')
    const third = (await build(spec, registry)).result
    expect(produced).toEqual(['base-lite', 'hello', 'hello'])
    const cpio = parseCpio(decompress(spec.compress, readFileSync(third.artefacts[0]!.path)))
    expect(cpio.find((e) => e.name === 'opt/base-lite/payload')!.data.toString()).toMatch(/^expensive output for base-lite/)
  })
})

describe('rdk build (CLI)', () => {
  const cli = resolve('bin/run.js')
  const built = existsSync(resolve('dist/commands/build.js'))
  const rdk = (args: string[], env: Record<string, string> = {}) =>
    spawnSync(process.execPath, [cli, 'build', ...args], {encoding: 'utf8', cwd: freshDir(), env: {...process.env, ...env}})

  it.skipIf(!built)('prints the resolved spec', () => {
    const r = rdk(['--print-spec', '--kernel-arg', 'console=ttyS0', '--compress', 'xz', '--name', 'x'], {SOURCE_DATE_EPOCH: '7'})
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/^flavor: tiny$/m)
    expect(r.stdout).toMatch(/^name: x$/m)
    expect(r.stdout).toMatch(/^compress: xz$/m)
    expect(r.stdout).toMatch(/^sourceDateEpoch: 7$/m)
    expect(r.stdout).toMatch(/^ {2}console: ttyS0$/m)
  })

  it.skipIf(!built)('reports spec and build errors without a stack trace', () => {
    const bad = rdk(['--kernel-arg', 'quiet'])
    expect(bad.status).toBe(2)
    expect(bad.stderr).toMatch(/--kernel-arg "quiet": expected K=V/)
    expect(bad.stderr).not.toMatch(/\n\s+at /)
    const flavor = rdk(['--flavor', 'container'])
    expect(flavor.status).toBe(2)
    expect(flavor.stderr).toMatch(/flavor 'container' is not implemented yet/)
    expect(flavor.stderr).not.toMatch(/\n\s+at /)
  })
})
