/**
 * Content-addressed cache for expensive stage outputs (extracted package sets, compressed
 * initramfs images, …) under spec.cacheDir.
 *
 * A cache key is the sha256 of a canonical JSON document: {cache format, namespace, inputs}, where
 * `inputs` is whatever determines the output (package names and versions, a tree digest, the
 * compression…). Objects are serialised with sorted keys, so key order never matters.
 *
 * Layout:
 *   <cacheDir>/blobs/ab/abcdef…          file contents by sha256 (shared by every fragment)
 *   <cacheDir>/<namespace>/<key>/        one entry: a directory, published by an atomic rename
 *
 * An entry either fully exists or not at all: producers write into a temporary directory that is
 * renamed into place only when they succeed.
 */
import {createHash, randomBytes} from 'node:crypto'
import {copyFile, constants as fsConstants, mkdir, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {readdirSync, rmSync} from 'node:fs'
import {join} from 'node:path'
import {BuildError} from './errors.js'
import {FileTree, type TreeEntry} from './tree.js'

export const CACHE_FORMAT = 'rdk-cache-v1'

/** JSON with object keys sorted at every level (stable hashing input). */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v)) {
      return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    }
    return v
  })
}

export function cacheKey(namespace: string, inputs: unknown): string {
  return createHash('sha256')
    .update(canonicalJson({format: CACHE_FORMAT, namespace, inputs}))
    .digest('hex')
}

const NS_RE = /^[a-z0-9][a-z0-9._-]*$/

export interface CacheStats {
  hits: number
  misses: number
  /** namespace/key → hit|miss, in order of use. */
  log: {namespace: string; key: string; hit: boolean}[]
}

export class BuildCache {
  readonly dir: string
  readonly stats: CacheStats = {hits: 0, misses: 0, log: []}
  /** Entries being produced right now (removed by cleanupSync on a signal). */
  private readonly inProgress = new Set<string>()

  constructor(dir: string) {
    this.dir = dir
  }

  key(namespace: string, inputs: unknown): string {
    return cacheKey(namespace, inputs)
  }

  entryDir(namespace: string, key: string): string {
    if (!NS_RE.test(namespace)) throw new BuildError(`cache namespace '${namespace}' is not valid`)
    return join(this.dir, namespace, key)
  }

  private note(namespace: string, key: string, hit: boolean): void {
    if (hit) this.stats.hits++
    else this.stats.misses++
    this.stats.log.push({namespace, key, hit})
  }

  /**
   * The cached directory for (namespace, inputs); `produce(dir)` fills a fresh one on a miss.
   * Returns the published directory (treat it as read-only).
   */
  async directory(namespace: string, inputs: unknown, produce: (dir: string) => Promise<void>): Promise<{dir: string; hit: boolean; key: string}> {
    const key = this.key(namespace, inputs)
    const final = this.entryDir(namespace, key)
    if (await exists(join(final, '.complete'))) {
      this.note(namespace, key, true)
      return {dir: final, hit: true, key}
    }
    this.note(namespace, key, false)
    await mkdir(join(this.dir, namespace), {recursive: true})
    const tmp = `${final}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
    await rm(tmp, {recursive: true, force: true})
    this.inProgress.add(tmp)
    await mkdir(tmp, {recursive: true})
    try {
      await produce(tmp)
      await writeFile(join(tmp, '.complete'), `${canonicalJson({namespace, key})}\n`)
      try {
        await rename(tmp, final)
      } catch (err) {
        // Another build published the same entry meanwhile (keep theirs), or a damaged leftover is there.
        if (await exists(join(final, '.complete'))) await rm(tmp, {recursive: true, force: true})
        else if ((err as NodeJS.ErrnoException).code === 'ENOTEMPTY' || (err as NodeJS.ErrnoException).code === 'EEXIST') {
          await rm(final, {recursive: true, force: true})
          await rename(tmp, final)
        } else throw err
      }
    } catch (err) {
      await rm(tmp, {recursive: true, force: true})
      throw err
    } finally {
      this.inProgress.delete(tmp)
    }
    return {dir: final, hit: false, key}
  }

  /** A single cached file (e.g. a compressed image): `produce(path)` writes it on a miss. */
  async file(namespace: string, inputs: unknown, produce: (path: string) => Promise<void>): Promise<{path: string; hit: boolean; key: string}> {
    const r = await this.directory(namespace, inputs, (dir) => produce(join(dir, 'data')))
    return {path: join(r.dir, 'data'), hit: r.hit, key: r.key}
  }

  /** Remove half-produced entries left by builds that died without cleaning up (SIGKILL). */
  sweepStale(): string[] {
    const removed: string[] = []
    const sweep = (dir: string) => {
      let names: string[]
      try {
        names = readdirSync(dir)
      } catch {
        return
      }
      for (const name of names) {
        const m = /\.tmp-(\d+)-[0-9a-f]{8}$/.exec(name)
        if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) {
          rmSync(join(dir, name), {recursive: true, force: true})
          removed.push(join(dir, name))
        }
      }
    }
    let namespaces: string[] = []
    try {
      namespaces = readdirSync(this.dir)
    } catch {
      return removed
    }
    for (const ns of namespaces) {
      if (ns === 'blobs') {
        for (const sub of readdirSync(join(this.dir, 'blobs'))) sweep(join(this.dir, 'blobs', sub))
      } else sweep(join(this.dir, ns))
    }
    return removed
  }

  /** Remove half-produced entries (synchronous: for signal handlers). */
  cleanupSync(): void {
    for (const p of this.inProgress) rmSync(p, {recursive: true, force: true})
    this.inProgress.clear()
  }

  blobPath(hash: string): string {
    return join(this.dir, 'blobs', hash.slice(0, 2), hash)
  }

  /** Copy a blob of `tree` into the cache's blob store (if not there yet). */
  private async storeBlob(tree: FileTree, hash: string): Promise<void> {
    const dest = this.blobPath(hash)
    if (await exists(dest)) return
    await mkdir(join(this.dir, 'blobs', hash.slice(0, 2)), {recursive: true})
    const tmp = `${dest}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
    this.inProgress.add(tmp)
    try {
      const host = tree.blobs.hostPath(hash)
      if (host) await copyFile(host, tmp, fsConstants.COPYFILE_FICLONE)
      else await writeFile(tmp, tree.blobs.buffer(hash)!)
      await rename(tmp, dest)
    } finally {
      this.inProgress.delete(tmp)
    }
  }

  /**
   * A cached tree fragment: on a miss `produce(fragment)` fills an empty FileTree, which is saved
   * (entries as JSON, contents in the blob store); on a hit the saved fragment is loaded. Either
   * way the result shares `blobsOf`'s blob store, ready for `tree.merge(fragment)`.
   */
  async fragment(
    namespace: string,
    inputs: unknown,
    blobsOf: FileTree,
    produce: (fragment: FileTree) => Promise<void>,
  ): Promise<{tree: FileTree; hit: boolean; key: string}> {
    let produced: FileTree | undefined
    const r = await this.directory(namespace, inputs, async (dir) => {
      produced = new FileTree(blobsOf.blobs)
      produced.source = namespace
      await produce(produced)
      const entries = produced.entries()
      for (const e of entries) if (e.type === 'file') await this.storeBlob(produced, e.hash!)
      await writeFile(join(dir, 'entries.json'), JSON.stringify({root: produced.root(), entries}))
    })
    if (produced) return {tree: produced, hit: false, key: r.key}
    const saved = JSON.parse(await readFile(join(r.dir, 'entries.json'), 'utf8')) as {root: TreeEntry; entries: TreeEntry[]}
    const tree = new FileTree(blobsOf.blobs)
    for (const e of saved.entries) {
      if (e.type === 'file' && !tree.blobs.has(e.hash!)) {
        const p = this.blobPath(e.hash!)
        const st = await stat(p).catch(() => undefined)
        if (!st || st.size !== e.size)
          throw new BuildError(`cache ${namespace}/${r.key}: blob ${e.hash} is missing or damaged; delete ${this.entryDir(namespace, r.key)} and rebuild`)
        tree.blobs.putKnownHostFile(e.hash!, p, st.size)
      }
      tree.insert(e)
    }
    return {tree, hit: true, key: r.key}
  }

  /** Copy a cached file to `dest` (a reflink where the filesystem can; never a hard link, so
   * editing an artefact cannot damage the cache). */
  async copyOut(cached: string, dest: string): Promise<void> {
    await copyFile(cached, dest, fsConstants.COPYFILE_FICLONE)
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  )
}
