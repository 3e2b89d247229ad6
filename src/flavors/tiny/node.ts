/**
 * Node in the tiny ramdisk: the host's Node binary (a stripped copy) with the shared libraries it
 * loads, and the agent bundle.
 *
 * The NodeSource build of Node 20 has ICU, OpenSSL and libuv built in: it needs only libdl,
 * libstdc++, libm, libgcc_s, libpthread, libc and the loader. Which files that is comes from the
 * Debian layer's ELF reader (elfClosure over the host's `/`, no `ldd`), so the image gets exactly the
 * files (and symlinks) the loader would open. `strip --strip-all` of the 99 MB binary saves ~12.6 MB.
 * The stripped copy is cached by the sha256 of the original; its version and both hashes are
 * returned for the build manifest.
 */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {copyFile, mkdir, realpath, rename, rm, stat} from 'node:fs/promises'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {run, ToolMissingError} from '../../common/exec.js'
import {elfClosure} from '../../debian/elf.js'

/** What node.ts needs of a tree (the build engine's FileTree and the Debian layer's DirSink fit). */
export interface NodeTreeSink {
  addFileFromHost(path: string, hostPath: string, opts?: {mode?: number; source?: string}): unknown
  addFile(path: string, data: Buffer, opts?: {mode?: number; source?: string}): unknown
  addSymlink(path: string, target: string, opts?: {source?: string}): unknown
  addDir(path: string, mode?: number): unknown
}

/** Image paths. */
export const NODE_IMAGE_PATH = '/usr/bin/node'
export const AGENT_IMAGE_PATH = '/usr/lib/rdk/agent.mjs'
/** The agent bundle `npm run build` writes (resolves the same from src/ and dist/). */
export const AGENT_BUNDLE = fileURLToPath(new URL('../../../dist/agent.mjs', import.meta.url))

export interface NodeRuntimeOptions {
  /** Host Node binary; default /usr/bin/node if it exists, else this process's own. */
  node?: string
  /** Keep a stripped copy (`strip --strip-all`, binutils) in the image; default true. */
  strip?: boolean
  /** Where the stripped copy is cached (`<cacheDir>/node/<sha256>.stripped`). */
  cacheDir: string
  /**
   * Add the libraries Node loads, taken from the host (default true). Turn off when the image gets
   * them from Debian packages instead (libc6, libstdc++6, libgcc-s1).
   */
  libraries?: boolean
  /** Source label for the size report. */
  source?: string
}

export interface NodeRuntimeInfo {
  /** `node --version` of the binary (v20.20.2). */
  version: string
  /** The host binary it came from (symlinks resolved). */
  hostPath: string
  /** sha256 of the host binary. */
  sourceSha256: string
  /** sha256 and size of what went into the image. */
  sha256: string
  size: number
  stripped: boolean
  /** Libraries (and symlinks to them) put into the image, with where they came from. */
  libraries: {path: string; type: 'file' | 'symlink'; hostPath?: string; target?: string; sha256?: string; size?: number}[]
}

export async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

async function defaultNode(): Promise<string> {
  return (await stat('/usr/bin/node').then((s) => s.isFile(), () => false)) ? '/usr/bin/node' : process.execPath
}

/** A stripped copy of `binary` in the cache (made once per content hash). */
async function strippedCopy(binary: string, sha: string, cacheDir: string): Promise<string> {
  const dir = join(cacheDir, 'node')
  const out = join(dir, `${sha}.stripped`)
  if (await stat(out).then((s) => s.isFile(), () => false)) return out
  await mkdir(dir, {recursive: true})
  const tmp = `${out}.${process.pid}.tmp`
  await copyFile(binary, tmp)
  try {
    await run('strip', ['--strip-all', tmp])
    await rename(tmp, out)
  } finally {
    await rm(tmp, {force: true})
  }
  return out
}

/** Put Node (at /usr/bin/node) and, unless told otherwise, its shared libraries into `sink`. */
export async function addNodeRuntime(sink: NodeTreeSink, opts: NodeRuntimeOptions): Promise<NodeRuntimeInfo> {
  const source = opts.source ?? 'node'
  const hostPath = await realpath(opts.node ?? (await defaultNode()))
  const sourceSha256 = await sha256OfFile(hostPath)
  const version = (await run(hostPath, ['--version'])).stdout.trim()
  const strip = opts.strip ?? true
  let binary = hostPath
  if (strip) {
    try {
      binary = await strippedCopy(hostPath, sourceSha256, opts.cacheDir)
    } catch (err) {
      if (err instanceof ToolMissingError) {
        throw new Error(`stripping Node needs 'strip': install the Debian package 'binutils' (apt-get install binutils), or build with strip off`)
      }
      throw err
    }
  }
  const st = await stat(binary)
  const info: NodeRuntimeInfo = {
    version,
    hostPath,
    sourceSha256,
    sha256: binary === hostPath ? sourceSha256 : await sha256OfFile(binary),
    size: st.size,
    stripped: strip,
    libraries: [],
  }
  sink.addDir('/usr/bin', 0o755)
  await sink.addFileFromHost(NODE_IMAGE_PATH, binary, {mode: 0o755, source})

  if (opts.libraries ?? true) {
    const closure = elfClosure([hostPath.slice(1)], {root: '/'})
    for (const f of closure.files) {
      if (f.role === 'executable') continue
      if (f.type === 'symlink') {
        sink.addSymlink(f.path, f.target!, {source})
        info.libraries.push({path: '/' + f.path, type: 'symlink', target: f.target})
      } else {
        const host = '/' + f.path
        await sink.addFileFromHost(f.path, host, {mode: 0o755, source})
        info.libraries.push({path: '/' + f.path, type: 'file', hostPath: host, sha256: await sha256OfFile(host), size: (await stat(host)).size})
      }
    }
  }
  return info
}

/** Put the agent bundle at /usr/lib/rdk/agent.mjs. */
export async function addAgentBundle(sink: NodeTreeSink, bundle = AGENT_BUNDLE, source = 'agent'): Promise<{sha256: string; size: number}> {
  const st = await stat(bundle).catch(() => undefined)
  if (!st?.isFile()) throw new Error(`the agent bundle ${bundle} does not exist: run 'npm run build' first`)
  sink.addDir('/usr/lib/rdk', 0o755)
  await sink.addFileFromHost(AGENT_IMAGE_PATH, bundle, {mode: 0o644, source})
  return {sha256: await sha256OfFile(bundle), size: st.size}
}
