/**
 * Running a build: spec + the flavor's stage list → artefacts (src/flavors/index.ts picks the
 * flavor; this module does not know any flavor).
 *
 * - Each stage may skip itself (`skip(ctx)`, a reason); planBuild() asks every stage without running
 *   anything, for `rdk build --dry-run`.
 * - One progress line per stage on stderr (`[3/9] assemble-tree  212 entries  0.04s`), timings kept
 *   for the --json result.
 * - Artefacts are written to temporary files in the output directory and renamed into place by
 *   the last stage only; a failing stage, SIGINT or SIGTERM leaves no partial file behind (a build
 *   killed with SIGKILL leaves its temporary files, which the next build there removes).
 * - The scratch directory (staged trees, the uncompressed cpio) is removed in every case.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {BuildCache} from './cache.js'
import {Outputs, type BuildContext} from './context.js'
import {BuildError, BuildInterruptedError, SpecError} from './errors.js'
import type {Element} from './elements.js'
import {FINAL_STAGE, type FlavorDefinition, type Stage} from './stage.js'
import type {BuildSpec, Format} from './spec.js'
import {resolveBuildElements} from './stages.js'
import {FileTree} from './tree.js'

export interface BuildOptions {
  /** The flavor to build: its stage list (src/flavors/index.ts flavorFor(spec.flavor)). */
  flavor: FlavorDefinition
  /** Where progress lines go (default: stderr, prefixed with "rdk build: "). */
  log?: (line: string) => void
  /** Clean up and exit on SIGINT/SIGTERM (default true; tests running in-process turn it off). */
  handleSignals?: boolean
}

export interface StageTiming {
  name: string
  ms: number
  note?: string
}

export interface BuildResult {
  name: string
  flavor: string
  output: string
  artefacts: {kind: string; file: string; path: string; size: number; sha256: string}[]
  stages: StageTiming[]
  elements: {name: string; dir: string; origin: 'built-in' | 'user'; files: number; bytes: number}[]
  sizes: {source: string; entries: number; files: number; bytes: number}[]
  /**
   * Uncompressed bytes by contributor: each element, and the flavor's inputs (the toolset's packages
   * together, the kernel modules, Node, the agent), largest first.
   */
  contributions: {name: string; files: number; bytes: number}[]
  /** The initramfs layers as packed: entries, bytes, compressed size, reused from the cache. */
  layers: {name: string; entries: number; bytes: number; compressed: number; cached: boolean}[]
  treeDigest: string
  cache: {dir: string; hits: number; misses: number}
  durationMs: number
}

/** Sizes by source folded into contributors: sources of the `toolset` layer count as one. */
export function contributions(sizes: BuildResult['sizes'], layers: ReadonlyMap<string, string>): BuildResult['contributions'] {
  const acc = new Map<string, {name: string; files: number; bytes: number}>()
  for (const s of sizes) {
    const name = layers.get(s.source) === 'toolset' ? 'toolset' : s.source
    const a = acc.get(name) ?? {name, files: 0, bytes: 0}
    a.files += s.files
    a.bytes += s.bytes
    acc.set(name, a)
  }
  return [...acc.values()].filter((a) => a.bytes > 0).sort((a, b) => b.bytes - a.bytes || (a.name < b.name ? -1 : 1))
}

/**
 * A stage failed; `cause` is the original error, `stage` its name. Not a UserError itself: the
 * command layer takes the hint and exit code from the cause when it is one, and treats anything
 * else as an internal failure (src/common/errors.ts describeError).
 */
export class StageFailedError extends Error {
  readonly stage: string
  override readonly cause: unknown
  constructor(stage: string, cause: unknown) {
    super(`stage ${stage}: ${cause instanceof Error ? cause.message : String(cause)}`)
    this.name = 'StageFailedError'
    this.stage = stage
    this.cause = cause
  }
}

/** The flavor's stages; a flavor without them (not implemented yet) or with a malformed list is refused. */
export function flavorStages(flavor: FlavorDefinition): readonly Stage[] {
  const stages = flavor.stages
  if (!stages) throw new SpecError(`flavor '${flavor.name}' is not implemented yet`)
  const names = new Set<string>()
  for (const s of stages) {
    if (names.has(s.name)) throw new BuildError(`flavor ${flavor.name}: two stages are named '${s.name}'`)
    names.add(s.name)
  }
  if (stages.at(-1)?.name !== FINAL_STAGE) throw new BuildError(`flavor ${flavor.name}: the stage list must end with ${FINAL_STAGE} (it commits the artefacts)`)
  return stages
}

/** Formats some stage of the flavor produces. */
export function flavorFormats(flavor: FlavorDefinition): Set<Format> {
  return new Set((flavor.stages ?? []).flatMap((s) => s.produces ?? []))
}

/** A requested format no stage of the flavor produces fails before any work is done. */
export function checkSupported(spec: BuildSpec, flavor: FlavorDefinition): void {
  flavorStages(flavor)
  const produced = flavorFormats(flavor)
  const missing = spec.formats.filter((f) => !produced.has(f))
  if (missing.length) {
    throw new SpecError(
      `format${missing.length === 1 ? '' : 's'} ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not implemented yet for flavor '${spec.flavor}'; formats that build today: ${[...produced].join(', ')}`,
    )
  }
}

function needs(spec: BuildSpec, what: 'kernel' | 'initramfs'): boolean {
  // Every boot format (iso, pxe, ipxe, tar, zip) bundles both.
  const only: Format = what === 'kernel' ? 'initramfs' : 'kernel'
  return spec.formats.some((f) => f !== only)
}

const stderrLog = (line: string) => process.stderr.write(`rdk build: ${line}\n`)

export interface BuildPlan {
  name: string
  flavor: string
  /** The resolved elements, in order. */
  elements: {name: string; dir: string; origin: 'built-in' | 'user'}[]
  /** Every stage in order; `skip` is why it would do nothing (null: it runs). */
  stages: {name: string; description: string; produces: Format[]; skip: string | null}[]
}

/**
 * What a build of `spec` would do, without doing it: resolve the elements (reading element.yaml
 * files) and ask every stage's skip(). Nothing is downloaded, built or written.
 */
export async function planBuild(spec: BuildSpec, flavor: FlavorDefinition): Promise<BuildPlan> {
  checkSupported(spec, flavor)
  const {elements} = await resolveBuildElements(spec, flavor)
  const ctx = {spec, flavor, elements, needs: (what: 'kernel' | 'initramfs') => needs(spec, what)}
  return {
    name: spec.name,
    flavor: flavor.name,
    elements: elements.map((e: Element) => ({name: e.name, dir: e.dir, origin: e.builtin ? 'built-in' : 'user'})),
    stages: flavorStages(flavor).map((s) => ({name: s.name, description: s.description, produces: [...(s.produces ?? [])], skip: s.skip?.(ctx) ?? null})),
  }
}

/** Run every stage of the flavor. Throws StageFailedError (or a UserError before the first stage). */
export async function runBuild(spec: BuildSpec, opts: BuildOptions): Promise<BuildResult> {
  const flavor = opts.flavor
  const log = opts.log ?? stderrLog
  checkSupported(spec, flavor)
  const started = Date.now()

  await mkdir(spec.output, {recursive: true})
  const stale = Outputs.sweepStale(spec.output)
  if (stale.length) log(`removed ${stale.length} temporary file(s) left by an interrupted build: ${stale.join(', ')}`)
  const outputs = new Outputs(spec.output)
  const workDir = mkdtempSync(join(tmpdir(), 'rdk-build-'))
  const controller = new AbortController()
  const tree = new FileTree()
  tree.source = 'build'
  const cache = new BuildCache(spec.cacheDir)
  const staleCache = cache.sweepStale()
  if (staleCache.length) log(`removed ${staleCache.length} half-written cache entr${staleCache.length === 1 ? 'y' : 'ies'} left by an interrupted build`)

  const cleanup = () => {
    outputs.cleanupSync()
    cache.cleanupSync()
    rmSync(workDir, {recursive: true, force: true})
  }
  const onSignal = (sig: NodeJS.Signals) => {
    controller.abort(new BuildInterruptedError(sig))
    cleanup()
    log(`interrupted by ${sig}: removed temporary outputs, nothing was written to ${spec.output}`)
    // Exiting runs execa's exit hook, which stops any tool still running.
    process.exit(sig === 'SIGINT' ? 130 : 143)
  }
  const handleSignals = opts.handleSignals ?? true
  if (handleSignals) {
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
  }

  let current = ''
  const ctx: BuildContext = {
    spec,
    flavor,
    elements: [],
    tree,
    cache,
    workDir,
    outputs,
    packages: [],
    layers: new Map(),
    bootFiles: {},
    manifestExtra: {},
    signal: controller.signal,
    log: (line) => log(`  ${current}: ${line}`),
    packageRequests() {
      const seen = new Set<string>()
      const out: ReturnType<BuildContext['packageRequests']> = []
      for (const el of ctx.elements) {
        for (const p of el.manifest.packages) {
          if (seen.has(p.name)) continue
          seen.add(p.name)
          out.push({...p, element: el.name})
        }
      }
      return out
    },
    hookEnv() {
      return {
        SOURCE_DATE_EPOCH: String(spec.sourceDateEpoch),
        RDK_FLAVOR: spec.flavor,
        RDK_BUILD_NAME: spec.name,
        RDK_CACHE_DIR: spec.cacheDir,
        RDK_WORK_DIR: workDir,
        DIB_RELEASE: spec.debianSuite,
        RDK_DEBIAN_MIRROR: spec.debianMirror,
      }
    },
    needs: (what) => needs(spec, what),
  }

  const stages = flavorStages(flavor)
  const timings: StageTiming[] = []
  try {
    for (const [i, stage] of stages.entries()) {
      if (controller.signal.aborted) throw controller.signal.reason
      current = stage.name
      const t0 = process.hrtime.bigint()
      // biome-ignore lint/suspicious/noConfusingVoidType: Stage.run() returns a note or nothing
      let note: string | void
      try {
        const skip = stage.skip?.(ctx)
        note = skip ? `skipped: ${skip}` : await stage.run(ctx)
      } catch (err) {
        throw new StageFailedError(stage.name, err)
      }
      const ms = Number(process.hrtime.bigint() - t0) / 1e6
      timings.push({name: stage.name, ms: Math.round(ms * 10) / 10, ...(note ? {note} : {})})
      log(`[${i + 1}/${stages.length}] ${stage.name}${note ? `  ${note}` : ''}  (${(ms / 1000).toFixed(2)}s)`)
    }
  } catch (err) {
    cleanup()
    throw err
  } finally {
    if (handleSignals) {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    }
    rmSync(workDir, {recursive: true, force: true})
  }

  const sizes = tree.sizeBySource()
  return {
    name: spec.name,
    flavor: spec.flavor,
    output: spec.output,
    artefacts: outputs.all().map((a) => ({kind: a.kind, file: a.file, path: a.path, size: a.size ?? 0, sha256: a.sha256 ?? ''})),
    stages: timings,
    elements: ctx.elements.map((e) => {
      const s = sizes.find((x) => x.source === e.name)
      return {name: e.name, dir: e.dir, origin: e.builtin ? 'built-in' : 'user', files: s?.files ?? 0, bytes: s?.bytes ?? 0}
    }),
    sizes,
    contributions: contributions(sizes, ctx.layers),
    layers: (ctx.initramfs?.layers ?? []).map(({name, entries, bytes, compressed, cached}) => ({name, entries, bytes, compressed, cached})),
    treeDigest: tree.digest(),
    cache: {dir: cache.dir, hits: cache.stats.hits, misses: cache.stats.misses},
    durationMs: Date.now() - started,
  }
}
