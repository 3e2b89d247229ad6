/**
 * Running element hook scripts against the tree.
 *
 * The tiny flavor has no chroot: the tree is written out ("staged") to a directory on the host,
 * each hook runs as an ordinary host process (as the user running rdk) with TARGET_ROOT set to
 * that directory, and the directory is read back into the tree afterwards. What this means:
 *
 * - hooks must only touch files under $TARGET_ROOT and must not expect to run image binaries
 *   (they are for a different root, maybe a different libc); they are trusted code.
 * - symlinks are staged relative to, and clamped at, TARGET_ROOT (an absolute link to /run/… would
 *   otherwise lead a hook's write out to the host's /run); links the hooks leave alone keep their
 *   original target.
 * - ownership is not staged (no root needed): files keep the owner they had in the tree; new files
 *   belong to root. Device nodes are not staged (mknod needs root) and stay in the tree untouched.
 * - a file's mode is taken back from the staged copy only if a hook changed it.
 * - files a hook creates or changes are attributed to the hook's element in the size report.
 */
import {constants as fsConstants} from 'node:fs'
import {chmod, copyFile, link, lstat, mkdir, readdir, readlink, symlink, writeFile} from 'node:fs/promises'
import {join, posix} from 'node:path'
import {CommandFailedError, run, ToolMissingError} from '../common/exec.js'
import {ElementError} from './errors.js'
import {EXIT_FAILURE} from '../common/errors.js'
import {hooksFor, type Element, type Hook, type HookPhase} from './elements.js'
import type {FileTree, TreeEntry} from './tree.js'

interface Sig {
  type: 'file' | 'dir' | 'symlink' | 'other'
  ino: bigint
  size: bigint
  mode: number
  ctime: bigint
  mtime: bigint
}

async function sigOf(p: string): Promise<Sig> {
  const st = await lstat(p, {bigint: true})
  return {
    type: st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other',
    ino: st.ino,
    size: st.size,
    mode: Number(st.mode & 0o7777n),
    ctime: st.ctimeNs,
    mtime: st.mtimeNs,
  }
}

const sameSig = (a: Sig | undefined, b: Sig | undefined) =>
  !!a && !!b && a.type === b.type && a.ino === b.ino && a.size === b.size && a.mode === b.mode && a.ctime === b.ctime && a.mtime === b.mtime

async function scan(root: string): Promise<Map<string, Sig>> {
  const out = new Map<string, Sig>()
  const walk = async (dir: string, rel: string) => {
    for (const name of (await readdir(dir)).sort()) {
      const p = join(dir, name)
      const r = `${rel}/${name}`
      const s = await sigOf(p)
      out.set(r, s)
      if (s.type === 'dir') await walk(p, r)
    }
  }
  await walk(root, '')
  return out
}

/**
 * A symlink's target as staged: relative, and clamped at the image root the way the kernel would
 * resolve it inside the image, so following it (`echo x > $TARGET_ROOT/etc/resolv.conf` through a
 * link to /run/…) never leaves TARGET_ROOT. Untouched links keep their original target in the tree.
 */
export function stagedLinkTarget(linkPath: string, target: string): string {
  const from = posix.dirname(linkPath)
  const parts: string[] = []
  for (const part of (target.startsWith('/') ? target : `${from}/${target}`).split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') parts.pop()
    else parts.push(part)
  }
  return posix.relative(from, `/${parts.join('/')}`) || '.'
}

/** Write the tree to `dir` (which must exist and be empty). Returns what was written, by image path. */
export async function stageTree(tree: FileTree, dir: string): Promise<Map<string, {sig: Sig; written: number}>> {
  const written = new Map<string, number>()
  for (const e of tree.entries()) {
    const p = join(dir, e.path)
    switch (e.type) {
      case 'dir':
        await mkdir(p)
        written.set(e.path, e.mode | 0o700)
        break
      case 'file': {
        const host = tree.blobs.hostPath(e.hash!)
        if (host) await copyFile(host, p, fsConstants.COPYFILE_FICLONE)
        else await writeFile(p, tree.blobs.buffer(e.hash!)!)
        written.set(e.path, e.mode | 0o600)
        break
      }
      case 'symlink':
        await symlink(stagedLinkTarget(e.path, e.target!), p)
        break
      case 'hardlink':
        break // after every file exists
      default:
        break // device nodes: not staged
    }
  }
  for (const e of tree.entries()) {
    if (e.type === 'hardlink') await link(join(dir, e.target!), join(dir, e.path)).catch(() => undefined)
  }
  // Modes last, deepest first, so a read-only directory does not stop us writing into it.
  for (const [path, mode] of [...written].reverse()) await chmod(join(dir, path), mode)
  const sigs = await scan(dir)
  const out = new Map<string, {sig: Sig; written: number}>()
  for (const [path, s] of sigs) out.set(path, {sig: s, written: written.get(path) ?? s.mode})
  return out
}

/**
 * Read a staged directory back into the tree: unchanged paths keep their entry, changed and new
 * ones are re-added (attributed via `changedBy`), vanished ones are removed.
 */
export async function unstageTree(
  tree: FileTree,
  dir: string,
  staged: Map<string, {sig: Sig; written: number}>,
  changedBy: Map<string, string>,
  fallbackSource: string,
): Promise<{added: number; changed: number; removed: number}> {
  const now = await scan(dir)
  let added = 0
  let changed = 0
  let removed = 0
  const before = new Map<string, TreeEntry>(tree.entries().map((e) => [e.path, e]))
  // Removed first (deepest last is fine: remove() takes a subtree).
  for (const [path] of staged) {
    if (!now.has(path) && tree.get(path)?.path === path) {
      tree.remove(path)
      removed++
    }
  }
  for (const [path, s] of now) {
    const old = staged.get(path)
    if (old && sameSig(old.sig, s)) continue
    const prev = before.get(path)
    const source = changedBy.get(path) ?? fallbackSource
    const keepMode = old && s.mode === old.written && prev ? prev.mode : s.mode
    const owner = prev && prev.type !== 'hardlink' ? (prev.owner ?? (prev.uid || prev.gid ? `${prev.uid}:${prev.gid}` : undefined)) : undefined
    const host = join(dir, path)
    if (s.type === 'dir') {
      if (prev?.type === 'dir' && prev.mode === keepMode) continue
      if (prev && prev.type !== 'dir') tree.remove(path)
      tree.addDir(path, keepMode, {source, owner})
    } else if (s.type === 'file') {
      if (prev && prev.type !== 'file' && prev.type !== 'hardlink') tree.remove(path)
      await tree.addFileFromHost(path, host, {mode: keepMode, source, owner})
    } else if (s.type === 'symlink') {
      const target = await readlink(host)
      if (prev?.type === 'symlink' && prev.target === target) continue
      if (prev) tree.remove(path)
      tree.addSymlink(path, target, {source})
    } else {
      continue // FIFOs, sockets: not image content
    }
    if (prev) changed++
    else added++
  }
  return {added, changed, removed}
}

export interface HookRunOptions {
  elements: Element[]
  phases: readonly HookPhase[]
  /** Directory to stage the tree into (created). */
  stageDir: string
  env: Record<string, string>
  log: (line: string) => void
}

/** Run every hook of `phases` (in order) against the tree. Returns the hooks that ran. */
export async function runHooks(tree: FileTree, opts: HookRunOptions): Promise<{hooks: Hook[]; added: number; changed: number; removed: number}> {
  const plan: Hook[] = opts.phases.flatMap((phase) => hooksFor(opts.elements, phase))
  if (plan.length === 0) return {hooks: [], added: 0, changed: 0, removed: 0}
  await mkdir(opts.stageDir, {recursive: true})
  const staged = await stageTree(tree, opts.stageDir)
  const changedBy = new Map<string, string>()
  let prev = await scan(opts.stageDir)
  const names = opts.elements.map((e) => e.name).join(' ')
  for (const hook of plan) {
    const el = opts.elements.find((e) => e.name === hook.element)!
    const started = Date.now()
    try {
      await run(hook.path, [], {
        cwd: el.dir,
        env: {
          ...opts.env,
          TARGET_ROOT: opts.stageDir,
          TMP_MOUNT_PATH: opts.stageDir, // diskimage-builder's name for it
          RDK_ELEMENT: el.name,
          RDK_ELEMENT_DIR: el.dir,
          RDK_ELEMENTS: names,
          RDK_HOOK_PHASE: hook.phase,
        },
      })
    } catch (err) {
      if (err instanceof CommandFailedError) {
        const how = err.exitCode !== undefined ? `exited with code ${err.exitCode}` : 'was killed'
        const out = (err.stderr.trim() || err.stdout.trim()).split('\n').slice(-20).join('\n')
        // The hook ran and failed: the build failed (exit 1), the element's files are fine.
        throw new ElementError(`hook ${hook.phase}/${hook.name} of element '${el.name}' ${how}${out ? `:\n${out}` : ''}`, {exit: EXIT_FAILURE})
      }
      if (err instanceof ToolMissingError)
        throw new ElementError(
          `hook ${hook.phase}/${hook.name} of element '${el.name}' could not be started: ${hook.path} or the interpreter on its #! line is missing`,
        )
      throw err
    }
    const now = await scan(opts.stageDir)
    for (const [path, s] of now) if (!sameSig(prev.get(path), s)) changedBy.set(path, el.name)
    prev = now
    opts.log(`${hook.phase}/${hook.name} (${el.name}) ${((Date.now() - started) / 1000).toFixed(2)}s`)
  }
  const r = await unstageTree(tree, opts.stageDir, staged, changedBy, 'hooks')
  return {hooks: plan, ...r}
}
