/**
 * Node in the tiny ramdisk: the host's Node binary (a stripped copy) with the shared libraries it
 * loads, and the agent bundle.
 *
 * The NodeSource build of Node 20 has ICU, OpenSSL and libuv built in: it needs only libdl,
 * libstdc++, libm, libgcc_s, libpthread, libc and the loader. Which files that is comes from the
 * Debian layer's ELF reader (elfClosure over the host's `/`, no `ldd`), so the image gets exactly the
 * files (and symlinks) the loader would open. `strip --strip-all` of the 99 MB binary saves ~12.6 MB.
 * With `icu: 'en'` (the default) the ICU data built into Node is cut to root + English (icu.ts:
 * 33 MB → ≈4 MB, checked by running the result). The prepared copy is cached by the sha256 of the
 * original and what was done to it; its version and both hashes are returned for the build manifest.
 */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {copyFile, mkdir, readFile, realpath, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {run, ToolMissingError} from '../../common/exec.js'
import {elfClosure} from '../../debian/elf.js'
import {ICU_PROFILE_VERSION, ICU_SELF_CHECK, slimIcuInBinary, type IcuSlimResult} from './icu.js'

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
  /** ICU data to keep: `en` (root + English, the default) or `full` (as built). */
  icu?: 'en' | 'full'
  /** Where the prepared copy is cached (`<cacheDir>/node/<sha256>.<variant>`). */
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
  /** ICU data kept: `full`, or `en` with what the slimming kept. */
  icu: 'full' | ({profile: 'en'} & IcuSlimResult)
  /** Libraries (and symlinks to them) put into the image, with where they came from. */
  libraries: {path: string; type: 'file' | 'symlink'; hostPath?: string; target?: string; sha256?: string; size?: number}[]
}

export async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

async function defaultNode(): Promise<string> {
  return (await stat('/usr/bin/node').then(
    (s) => s.isFile(),
    () => false,
  ))
    ? '/usr/bin/node'
    : process.execPath
}

/**
 * A copy of `binary` in the cache, stripped and/or with slimmed ICU data, made once per content hash
 * and variant. A slimmed binary must pass ICU_SELF_CHECK on this host before it is kept.
 */
async function preparedCopy(
  binary: string,
  sha: string,
  cacheDir: string,
  opts: {strip: boolean; icu: 'en' | 'full'},
): Promise<{path: string; icu?: IcuSlimResult}> {
  const variant = [opts.strip ? 'stripped' : 'unstripped', opts.icu === 'en' ? `icu-en${ICU_PROFILE_VERSION}` : 'icu-full'].join('.')
  const dir = join(cacheDir, 'node')
  const out = join(dir, `${sha}.${variant}`)
  const meta = `${out}.json`
  if (
    await stat(out).then(
      (s) => s.isFile(),
      () => false,
    )
  ) {
    const icu = opts.icu === 'en' ? (JSON.parse(await readFile(meta, 'utf8').catch(() => 'null')) as IcuSlimResult | null) : undefined
    if (opts.icu === 'full' || icu) return {path: out, ...(icu ? {icu} : {})}
  }
  await mkdir(dir, {recursive: true})
  const tmp = `${out}.${process.pid}.tmp`
  await copyFile(binary, tmp)
  try {
    if (opts.strip) {
      try {
        await run('strip', ['--strip-all', tmp])
      } catch (err) {
        if (err instanceof ToolMissingError) {
          throw new Error(`stripping Node needs 'strip': install the Debian package 'binutils' (apt-get install binutils), or build with strip off`)
        }
        throw err
      }
    }
    let icu: IcuSlimResult | undefined
    if (opts.icu === 'en') {
      const buf = await readFile(tmp)
      icu = slimIcuInBinary(buf, undefined, binary)
      await writeFile(tmp, buf, {mode: 0o755})
      const check = await run(tmp, ['-e', ICU_SELF_CHECK], {allowFailure: true})
      if (check.exitCode !== 0 || check.stdout !== 'ok') {
        throw new Error(
          `Node with slimmed ICU data failed its self-check (${(check.stderr || check.stdout).trim().split('\n').slice(-3).join(' ')}); build with nodeIcu: full`,
        )
      }
      await writeFile(meta, `${JSON.stringify(icu)}\n`)
    }
    await rename(tmp, out)
    return {path: out, ...(icu ? {icu} : {})}
  } finally {
    await rm(tmp, {force: true})
  }
}

/** Put Node (at /usr/bin/node) and, unless told otherwise, its shared libraries into `sink`. */
export async function addNodeRuntime(sink: NodeTreeSink, opts: NodeRuntimeOptions): Promise<NodeRuntimeInfo> {
  const source = opts.source ?? 'node'
  const hostPath = await realpath(opts.node ?? (await defaultNode()))
  const sourceSha256 = await sha256OfFile(hostPath)
  const version = (await run(hostPath, ['--version'])).stdout.trim()
  const strip = opts.strip ?? true
  const icuProfile = opts.icu ?? 'en'
  let binary = hostPath
  let icu: IcuSlimResult | undefined
  if (strip || icuProfile !== 'full') ({path: binary, icu} = await preparedCopy(hostPath, sourceSha256, opts.cacheDir, {strip, icu: icuProfile}))
  const st = await stat(binary)
  const info: NodeRuntimeInfo = {
    version,
    hostPath,
    sourceSha256,
    sha256: binary === hostPath ? sourceSha256 : await sha256OfFile(binary),
    size: st.size,
    stripped: strip,
    icu: icu ? {profile: 'en', ...icu} : 'full',
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
        info.libraries.push({path: `/${f.path}`, type: 'symlink', target: f.target})
      } else {
        const host = `/${f.path}`
        await sink.addFileFromHost(f.path, host, {mode: 0o755, source})
        info.libraries.push({path: `/${f.path}`, type: 'file', hostPath: host, sha256: await sha256OfFile(host), size: (await stat(host)).size})
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
