/**
 * Where the Debian layer puts files: a minimal tree interface (the build engine's in-memory tree
 * implements it) and DirSink, a real directory used for staging and tests.
 *
 * Paths are image paths: relative to the image root, '/'-separated, with or without a leading '/'.
 * DirSink resolves symlinks chroot-style (an absolute link target means the sink's root, `..` stops at
 * the root), so nothing written through it can land outside its directory.
 */
import {chmodSync, copyFileSync, lstatSync, mkdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

export interface SinkFileOptions {
  /** Permission bits (setuid/setgid/sticky included). Default 0o644. */
  mode?: number
  /** Who put the file there (a Debian package name, 'kernel', …): for size reports and conflicts. */
  source?: string
}

export interface TreeSink {
  addFile(path: string, data: Buffer, opts?: SinkFileOptions): void
  addFileFromHost(path: string, hostPath: string, opts?: SinkFileOptions): void | Promise<void>
  addDir(path: string, mode?: number): void
  addSymlink(path: string, target: string, opts?: {source?: string}): void
}

export class SinkPathError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'SinkPathError'
  }
}

/**
 * Split an image path into components. Rejects `..` and NUL; `.` and empty components are dropped.
 * A leading '/' is allowed (image paths are absolute inside the image).
 */
export function imagePathParts(path: string): string[] {
  if (path.includes('\0')) throw new SinkPathError(`image path contains a NUL byte: ${JSON.stringify(path)}`)
  const parts = path.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.includes('..')) throw new SinkPathError(`image path must not contain '..': ${JSON.stringify(path)}`)
  return parts
}

/** Canonical form of an image path: no leading '/', no '.', no empty components. */
export function normaliseImagePath(path: string): string {
  return imagePathParts(path).join('/')
}

const MAX_SYMLINK_HOPS = 40

/**
 * Resolve `parts` inside `root` with chroot semantics, following symlinks in every component except
 * (when `followLast` is false) the last one. Returns the resolved components (relative to root).
 * Components that do not exist are kept as they are. `onLink` sees every symlink followed (its
 * canonical image path and its target).
 */
export function resolveInRoot(root: string, parts: readonly string[], followLast = true, onLink?: (link: string, target: string) => void): string[] {
  let hops = 0
  const out: string[] = []
  const queue = [...parts]
  while (queue.length > 0) {
    const name = queue.shift()!
    if (name === '' || name === '.') continue
    if (name === '..') {
      out.pop()
      continue
    }
    const isLast = queue.length === 0
    const host = join(root, ...out, name)
    let st
    try {
      st = lstatSync(host)
    } catch {
      out.push(name)
      continue
    }
    if (st.isSymbolicLink() && (followLast || !isLast)) {
      if (++hops > MAX_SYMLINK_HOPS) throw new SinkPathError(`too many levels of symbolic links resolving /${parts.join('/')}`)
      const target = readlinkSync(host)
      onLink?.([...out, name].join('/'), target)
      if (target.startsWith('/')) out.length = 0
      queue.unshift(...target.split('/'))
      continue
    }
    out.push(name)
  }
  return out
}

/** A TreeSink writing into a real directory (staging, tests). Records who wrote each path. */
export class DirSink implements TreeSink {
  /** image path (canonical) → source of the last write */
  readonly sources = new Map<string, string | undefined>()

  constructor(readonly root: string) {
    mkdirSync(root, {recursive: true})
  }

  /** Host path for an image path, creating missing parent directories (0755). */
  private prepare(path: string): {host: string; rel: string} {
    const parts = imagePathParts(path)
    if (parts.length === 0) throw new SinkPathError('cannot write the image root itself')
    const parent = resolveInRoot(this.root, parts.slice(0, -1))
    let dir = this.root
    for (const p of parent) {
      dir = join(dir, p)
      let st
      try {
        st = lstatSync(dir)
      } catch {
        mkdirSync(dir, {mode: 0o755})
        continue
      }
      if (!st.isDirectory()) throw new SinkPathError(`cannot create /${parts.join('/')}: /${parent.join('/')} is not a directory`)
    }
    const rel = [...parent, parts[parts.length - 1]!].join('/')
    return {host: join(this.root, rel), rel}
  }

  /** Remove whatever non-directory is at `host` (files and symlinks are replaced, like dpkg does). */
  private clear(host: string, rel: string): void {
    let st
    try {
      st = lstatSync(host)
    } catch {
      return
    }
    if (st.isDirectory()) throw new SinkPathError(`cannot replace directory /${rel} with a file or symlink`)
    rmSync(host, {force: true})
  }

  addFile(path: string, data: Buffer, opts: SinkFileOptions = {}): void {
    const {host, rel} = this.prepare(path)
    this.clear(host, rel)
    writeFileSync(host, data, {mode: 0o600})
    chmodSync(host, opts.mode ?? 0o644)
    this.sources.set(rel, opts.source)
  }

  addFileFromHost(path: string, hostPath: string, opts: SinkFileOptions = {}): void {
    const {host, rel} = this.prepare(path)
    this.clear(host, rel)
    copyFileSync(hostPath, host)
    chmodSync(host, opts.mode ?? lstatSync(hostPath).mode & 0o7777)
    this.sources.set(rel, opts.source)
  }

  addDir(path: string, mode = 0o755): void {
    const parts = imagePathParts(path)
    if (parts.length === 0) return
    const resolved = resolveInRoot(this.root, parts)
    const host = join(this.root, ...resolved)
    let st
    try {
      st = lstatSync(host)
    } catch {
      this.prepare(resolved.join('/'))
      mkdirSync(host, {mode})
      chmodSync(host, mode)
      return
    }
    if (!st.isDirectory()) throw new SinkPathError(`cannot create directory /${parts.join('/')}: a file is in the way`)
    chmodSync(host, mode)
  }

  addSymlink(path: string, target: string, opts: {source?: string} = {}): void {
    if (target === '' || target.includes('\0')) throw new SinkPathError(`bad symlink target for /${path}: ${JSON.stringify(target)}`)
    const {host, rel} = this.prepare(path)
    let st
    try {
      st = lstatSync(host)
    } catch {
      st = undefined
    }
    if (st?.isSymbolicLink() && readlinkSync(host) === target) {
      this.sources.set(rel, opts.source)
      return
    }
    this.clear(host, rel)
    symlinkSync(target, host)
    this.sources.set(rel, opts.source)
  }
}
