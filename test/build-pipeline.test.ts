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
import {checkSupported, flavorStages, planBuild, runBuild, StageFailedError, type BuildResult} from '../src/builder/pipeline.js'
import type {FlavorDefinition, Stage} from '../src/builder/stage.js'
import * as shared from '../src/builder/stages.js'
import {finishSpec, type BuildSpec} from '../src/builder/spec.js'
import {describeError} from '../src/common/errors.js'
import {buildImage, FLAVOR_TABLE, flavorFor} from '../src/flavors/index.js'
import {tiny} from '../src/flavors/tiny/index.js'

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

/** The shared stages without the tiny flavor's Debian/kernel/agent ones (no downloads in these tests). */
const TEST_STAGES: readonly Stage[] = [
  shared.resolveElementsStage,
  shared.rootHooksStage,
  shared.assembleTreeStage,
  shared.runHooksStage,
  shared.packInitramfsStage,
  shared.writeKernelStage,
  shared.writeArtefactsStage,
]

/** A flavor like tiny that starts from no elements (the tests pick their own), with `extra` stages after the named one. */
function testFlavor(extra?: {after: string; stage: Stage}): FlavorDefinition {
  const stages = [...TEST_STAGES]
  if (extra) stages.splice(stages.findIndex((s) => s.name === extra.after) + 1, 0, extra.stage)
  return {...tiny, defaultElements: [], stages}
}

async function testSpec(dir: string, over: Partial<BuildSpec> = {}): Promise<BuildSpec> {
  return finishSpec(
    {
      elements: ['hello'],
      elementPaths: [FIXTURES],
      output: join(dir, 'out'),
      cacheDir: join(dir, 'cache'),
      formats: ['initramfs'],
      sourceDateEpoch: EPOCH,
      ...over,
    },
    {env: {}, cwd: dir, aptRoot: dir},
  )
}

async function build(spec: BuildSpec, flavor = testFlavor()): Promise<{result: BuildResult; log: string[]}> {
  const log: string[] = []
  const result = await runBuild(spec, {flavor, handleSignals: false, log: (l) => log.push(l)})
  return {result, log}
}

async function buildError(spec: BuildSpec, flavor = testFlavor()): Promise<Error> {
  try {
    await build(spec, flavor)
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
    expect(result.stages.map((s) => s.name)).toEqual(TEST_STAGES.map((s) => s.name))
    expect(result.stages.find((s) => s.name === 'write-kernel')!.note).toBe('skipped: kernel format not requested')
    expect(result.stages.every((s) => typeof s.ms === 'number' && s.ms >= 0)).toBe(true)
    expect(log.filter((l) => /^\[\d+\/7\] /.test(l))).toHaveLength(7)
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
    const flavor = testFlavor({
      after: 'root-hooks',
      stage: {name: 'fake-kernel', description: 'test', run: async (ctx) => void (ctx.kernel = {path: vmlinuz, version: '6.1.0-test'})},
    })
    const spec = await testSpec(dir, {formats: ['kernel', 'initramfs'], name: 'lab'})
    const {result} = await build(spec, flavor)
    expect(result.artefacts.map((a) => a.file)).toEqual(['lab.initramfs', 'lab.kernel', 'lab.manifest.json'])
    expect(readFileSync(join(spec.output, 'lab.kernel'), 'utf8')).toBe('not really a kernel')
    expect(JSON.parse(readFileSync(join(spec.output, 'lab.manifest.json'), 'utf8')).kernel).toEqual({version: '6.1.0-test', source: null})
  })
})

describe('atomic outputs', () => {
  it('leaves the output directory as it was when a late stage fails', async () => {
    let workDir = ''
    const flavor = testFlavor({
      after: 'write-kernel',
      stage: {
        name: 'explode',
        description: 'fails after the initramfs was written',
        run: async (ctx) => {
          workDir = ctx.workDir
          expect(readdirSync(ctx.spec.output).some((f) => f.includes('.rdk-tmp-'))).toBe(true) // something half-done exists
          throw new Error('boom')
        },
      },
    })
    const spec = await testSpec(freshDir())
    mkdirSync(spec.output, {recursive: true})
    writeFileSync(join(spec.output, 'rdk-tiny.initramfs'), 'previous build')
    const err = await buildError(spec, flavor)
    expect(err).toBeInstanceOf(StageFailedError)
    expect((err as StageFailedError).stage).toBe('explode')
    expect(err.message).toBe('stage explode: boom')
    // A plain Error inside a stage is an internal failure: exit 1, and the CLI offers --debug.
    expect(describeError(err)).toMatchObject({exitCode: 1, internal: true})
    expect(listing(spec.output)).toEqual(['rdk-tiny.initramfs'])
    expect(readFileSync(join(spec.output, 'rdk-tiny.initramfs'), 'utf8')).toBe('previous build')
    expect(existsSync(workDir)).toBe(false)
  })

  it('writes nothing when a hook fails, and says which hook', async () => {
    const spec = await testSpec(freshDir(), {elements: ['failing-hook']})
    const err = await buildError(spec)
    expect(err).toBeInstanceOf(StageFailedError)
    expect(describeError(err)).toMatchObject({exitCode: 1, internal: false}) // the build failed; the message says why
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
  const stageNames = TEST_STAGES.map((s) => s.name)
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
        `import {finishSpec} from '${url('dist/builder/spec.js')}'
import {runBuild} from '${url('dist/builder/pipeline.js')}'
import * as shared from '${url('dist/builder/stages.js')}'
import {tiny} from '${url('dist/flavors/tiny/index.js')}'
const hang = (ctx) => new Promise(() => {
  process.stdout.write('READY ' + ctx.workDir + '\\n')
  setInterval(() => {}, 1000)
})
const wait = {name: 'wait', description: 'hangs', run: ${inCache ? "(ctx) => ctx.cache.directory('slow', {x: 1}, () => hang(ctx))" : 'hang'}}
const byName = Object.fromEntries(Object.values(shared).filter((s) => s && typeof s === 'object' && 'run' in s).map((s) => [s.name, s]))
const stages = ${JSON.stringify(stageNames)}.map((n) => byName[n])
stages.splice(stages.findIndex((s) => s.name === 'pack-initramfs') + 1, 0, wait)
const spec = await finishSpec(${JSON.stringify({elements: ['hello'], elementPaths: [FIXTURES], output: join(dir, 'out'), cacheDir: join(dir, 'cache'), formats: ['initramfs']})}, {env: {}})
await runBuild(spec, {flavor: {...tiny, defaultElements: [], stages}, log: (l) => process.stderr.write(l + '\\n')})
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
    expect(() => flavorFor('debian')).toThrow("flavor 'debian' is not implemented yet; flavors that build today: tiny")
    await expect(buildImage(await testSpec(dir, {flavor: 'container'}), {handleSignals: false})).rejects.toThrow("flavor 'container' is not implemented yet")
    expect(describeError(await buildImage(await testSpec(dir, {flavor: 'debian'})).catch((e: unknown) => e))).toMatchObject({
      exitCode: 2,
      hint: 'use --flavor tiny',
    })
    // This flavor has no make-iso stage: the format is refused before any stage runs, no output.
    const err = await buildError(await testSpec(dir, {formats: ['initramfs', 'iso']}))
    expect(err.message).toBe("format iso is not implemented yet for flavor 'tiny'; formats that build today: initramfs, kernel")
    expect(describeError(err).exitCode).toBe(2)
    expect(listing(join(dir, 'out'))).toEqual([])
  })

  it('says so when a kernel is asked for and no stage of the flavor provides one', async () => {
    const dir = freshDir()
    const err = await buildError(await testSpec(dir, {formats: ['kernel', 'initramfs']}))
    expect(err.message).toBe("stage write-kernel: no kernel image: no stage of flavor 'tiny' provided one")
    expect(listing(join(dir, 'out'))).toEqual([])
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
    expect(err.message).toMatch(/^stage pack-initramfs: required program 'zstd' was not found on PATH: install the Debian package 'zstd'/)
    expect(describeError(err)).toMatchObject({exitCode: 2, hint: 'apt-get install zstd', internal: false})
  })

  it('refuses a stage list that does not end with write-artefacts or names a stage twice', () => {
    const late = {name: 'late', description: '', run: async () => {}}
    expect(() => flavorStages({...tiny, stages: [...TEST_STAGES, late]})).toThrow(/must end with write-artefacts/)
    expect(() => flavorStages({...tiny, stages: [shared.assembleTreeStage, ...TEST_STAGES]})).toThrow(/two stages are named 'assemble-tree'/)
    expect(() => checkSupported({formats: ['kernel']} as BuildSpec, {name: 'debian', description: '', defaultElements: []})).toThrow(
      "flavor 'debian' is not implemented yet",
    )
  })
})

describe('flavors and their stage lists', () => {
  it("tiny's file lists the whole build, in order, each stage once", () => {
    expect(FLAVOR_TABLE.tiny).toBe(tiny)
    expect(flavorStages(tiny).map((s) => s.name)).toEqual([
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
    expect(FLAVOR_TABLE.debian.stages).toBeUndefined()
    expect(FLAVOR_TABLE.container.stages).toBeUndefined()
  })

  it('plans a build without running it: which stages would skip, and why', async () => {
    const dir = freshDir()
    const spec = await testSpec(dir, {formats: ['kernel', 'initramfs', 'iso'], elements: ['hello', 'failing-hook']})
    const flavor = {...tiny, defaultElements: []}
    const plan = await planBuild(spec, flavor)
    expect(plan.elements.map((e) => e.name)).toEqual(['base-lite', 'failing-hook', 'hello'])
    const skip = Object.fromEntries(plan.stages.map((s) => [s.name, s.skip]))
    expect(skip).toMatchObject({
      'resolve-elements': null,
      'root-hooks': 'no root.d scripts',
      'run-hooks': null, // failing-hook has a finalise.d script
      'fetch-packages': null,
      'pack-initramfs': null,
      'write-kernel': null,
      'make-iso': null,
      'make-pxe': 'pxe not requested',
      'make-ipxe': 'ipxe not requested',
      'make-bundles': 'no bundle requested',
    })
    // A bundle needs the ISO, PXE tree and iPXE script even when they are not formats of their own.
    const bundled = await planBuild(await testSpec(dir, {formats: ['tar']}), flavor)
    expect(bundled.stages.filter((s) => s.skip).map((s) => s.name)).toEqual(['root-hooks', 'write-kernel'])
    expect(existsSync(spec.output)).toBe(false) // nothing written
    expect(existsSync(spec.cacheDir)).toBe(false)
  })

  it('keeps the layers pointing one way: commands → flavors → builder → artefacts → common', () => {
    const importsOf = (dir: string): {file: string; spec: string}[] =>
      readdirSync(dir, {recursive: true, encoding: 'utf8'})
        .filter((f) => f.endsWith('.ts'))
        .flatMap((f) => [...readFileSync(join(dir, f), 'utf8').matchAll(/(?:from|import\()\s*'([^']+)'/g)].map((m) => ({file: `${dir}/${f}`, spec: m[1]!})))
    const bad = (dir: string, forbidden: RegExp) =>
      importsOf(dir)
        .filter((i) => forbidden.test(i.spec))
        .map((i) => `${i.file} → ${i.spec}`)
    expect(bad('src/artefacts', /\/(builder|flavors|commands|agent)\//)).toEqual([])
    expect(bad('src/builder', /\/(flavors|commands|agent)\//)).toEqual([])
    expect(bad('src/common', /\/(builder|flavors|commands|agent|artefacts|debian)\//)).toEqual([])
    expect(bad('src/agent', /\/(builder|flavors|commands|artefacts)\//)).toEqual([])
    // No import() built from a path anywhere in the builder side.
    for (const dir of ['src/builder', 'src/flavors', 'src/artefacts']) {
      for (const f of readdirSync(dir, {recursive: true, encoding: 'utf8'}).filter((x) => x.endsWith('.ts')))
        expect(readFileSync(join(dir, f), 'utf8'), f).not.toMatch(/\bimport\((?!')/)
    }
    expect(
      importsOf('src/builder')
        .concat(importsOf('src/flavors'), importsOf('src/artefacts'))
        .some((i) => i.spec.startsWith('.')),
    ).toBe(true) // the scan sees imports
  })

  it('skips a stage by its skip() without calling run()', async () => {
    let ran = false
    const flavor = testFlavor({after: 'root-hooks', stage: {name: 'never', description: 'skips', skip: () => 'not today', run: async () => void (ran = true)}})
    const {result, log} = await build(await testSpec(freshDir()), flavor)
    expect(ran).toBe(false)
    expect(result.stages.find((s) => s.name === 'never')!.note).toBe('skipped: not today')
    expect(log.join('\n')).toMatch(/\[3\/8\] never {2}skipped: not today/)
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
    const flavor = testFlavor({
      after: 'root-hooks',
      stage: {
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
    })
    const spec = await testSpec(dir, {elementPaths: [elements]})
    const first = (await build(spec, flavor)).result
    expect(produced).toEqual(['base-lite', 'hello'])
    const again = (await build(spec, flavor)).result
    expect(produced).toEqual(['base-lite', 'hello'])
    expect(again.artefacts[0]!.sha256).toBe(first.artefacts[0]!.sha256)
    writeFileSync(join(elements, 'hello/hello.txt'), 'touched\n')
    const third = (await build(spec, flavor)).result
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
