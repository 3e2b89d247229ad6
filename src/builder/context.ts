/**
 * What a build stage works with (BuildContext), and the output directory's artefacts, which are
 * written to temporary files and renamed into place only when every stage has succeeded.
 */
import {randomBytes} from 'node:crypto'
import {readdirSync, rmSync} from 'node:fs'
import {rename} from 'node:fs/promises'
import {join} from 'node:path'
import {pidAlive, type BuildCache} from './cache.js'
import type {Element, ElementCatalog, PackageRequest} from './elements.js'
import type {BuildSpec, Flavor} from './spec.js'
import type {FileTree} from './tree.js'

export interface KernelInfo {
  /** Host path of the kernel image (vmlinuz). */
  path: string
  version?: string
  /** Where it came from (e.g. `linux-image-6.1.0-21-amd64_6.1.90-1_amd64.deb`). */
  source?: string
}

export interface InstalledPackage {
  name: string
  version: string
  arch?: string
  /** The element that asked for it. */
  element?: string
}

export interface Artefact {
  /** kernel, initramfs, manifest, iso, … */
  kind: string
  /** File name in the output directory. */
  file: string
  /** Final path. */
  path: string
  /** Where it is written until the build succeeds. */
  tempPath: string
  size?: number
  sha256?: string
}

const TEMP_MARK = '.rdk-tmp-'
const TEMP_RE = /^\..*\.rdk-tmp-(\d+)-[0-9a-f]{8}$/

/** Artefacts of one build in one output directory. */
export class Outputs {
  readonly dir: string
  private readonly list: Artefact[] = []
  private readonly temps = new Set<string>()

  constructor(dir: string) {
    this.dir = dir
  }

  /** A tracked temporary path in the output directory (removed if the build fails). */
  tempFile(file: string): string {
    const p = join(this.dir, `.${file}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`)
    this.temps.add(p)
    return p
  }

  /** Declare an artefact; write it to the returned `tempPath`. Declaring a file again replaces it. */
  add(kind: string, file: string): Artefact {
    if (!/^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(file)) throw new Error(`artefact file name '${file}' is not a plain file name`)
    const i = this.list.findIndex((a) => a.file === file)
    const a: Artefact = {kind, file, path: join(this.dir, file), tempPath: this.tempFile(file)}
    if (i >= 0) this.list.splice(i, 1, a)
    else this.list.push(a)
    return a
  }

  all(): readonly Artefact[] {
    return this.list
  }

  byKind(kind: string): Artefact | undefined {
    return this.list.find((a) => a.kind === kind)
  }

  /** Rename every artefact into place, in declaration order. */
  async commit(): Promise<void> {
    for (const a of this.list) {
      await rename(a.tempPath, a.path)
      this.temps.delete(a.tempPath)
    }
  }

  /** Remove every temporary file (synchronous: safe in signal and exit handlers). */
  cleanupSync(): void {
    for (const p of this.temps) rmSync(p, {force: true, recursive: true})
    this.temps.clear()
  }

  /** Remove temporary files left by builds that died without cleaning up (e.g. SIGKILL). */
  static sweepStale(dir: string): string[] {
    const removed: string[] = []
    let names: string[]
    try {
      names = readdirSync(dir)
    } catch {
      return removed
    }
    for (const name of names) {
      const m = TEMP_RE.exec(name)
      if (!m) continue
      const pid = Number(m[1])
      if (pid === process.pid || pidAlive(pid)) continue
      rmSync(join(dir, name), {force: true, recursive: true})
      removed.push(name)
    }
    return removed
  }
}

/** What pack-initramfs made (for the --json result and later stages). */
export interface InitramfsInfo {
  treeDigest: string
  compressor: string
  layers: {name: string; digest: string; entries: number; bytes: number; compressed: number; cached: boolean}[]
}

/** Boot files the format stages write (iso, pxe, ipxe), for the bundles. */
export type BootFileKind = 'iso' | 'pxe' | 'ipxe'

export interface BootFile {
  /** File name in the output directory or the bundle. */
  file: string
  /** Where it was written (an output's temporary path, or the scratch directory for a bundle). */
  path: string
}

/** What a build's stages know of their flavor (FlavorDefinition in stage.ts adds the stage list). */
export interface FlavorInfo {
  name: Flavor
  description: string
  /** Elements every build of this flavor starts from (spec.elements are added). */
  defaultElements: readonly string[]
  /** Kernel arguments every boot artefact of this flavor carries, before the spec's (which win). */
  kernelArgs?: Readonly<Record<string, string | null>>
}

/** What `skip(ctx)` and `rdk build --dry-run` see: the spec, the flavor and the resolved elements. */
export interface PlanContext {
  readonly spec: BuildSpec
  readonly flavor: FlavorInfo
  /** The resolved elements in order (set by resolve-elements; --dry-run resolves them too). */
  elements: Element[]
  /** Does any requested format need the kernel / the initramfs? */
  needs(what: 'kernel' | 'initramfs'): boolean
}

/** Everything a stage can see and change. Stage outputs are typed fields, set by the stage named. */
export interface BuildContext extends PlanContext {
  /** The element catalogue (set by resolve-elements). */
  catalog?: ElementCatalog
  readonly tree: FileTree
  readonly cache: BuildCache
  /** Scratch directory of this build (removed when it ends). */
  readonly workDir: string
  readonly outputs: Outputs
  /** The kernel image, set by the flavor's kernel stage; needed by the kernel format. */
  kernel?: KernelInfo
  /** Packages installed into the tree, for the manifest (set by the package stage). */
  packages: InstalledPackage[]
  /**
   * Initramfs layers: tree source → layer name. pack-initramfs writes one compressed cpio per layer
   * (in order of first registration; directories first, unnamed sources last as `image`) and
   * concatenates them, so a rebuild recompresses only the layers whose files changed.
   */
  readonly layers: Map<string, string>
  /** Set by pack-initramfs. */
  initramfs?: InitramfsInfo
  /** Set by make-iso, make-pxe, make-ipxe (also when only a bundle needs them); read by make-bundles. */
  readonly bootFiles: Partial<Record<BootFileKind, BootFile>>
  /** Extra fields for <name>.manifest.json (keep them deterministic: no times, no host paths). */
  readonly manifestExtra: Record<string, unknown>
  /** Aborted on SIGINT/SIGTERM. */
  readonly signal: AbortSignal
  /** A detail line under the current stage (stderr). */
  log(line: string): void
  /** Debian packages the elements ask for, in element order, de-duplicated by name. */
  packageRequests(): (PackageRequest & {element: string})[]
  /** Environment given to hook scripts (and useful for plug-in tools). */
  hookEnv(): Record<string, string>
}
