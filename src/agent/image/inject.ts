/**
 * deploy.inject_files (IPA's inject_files.py): files written into (or deleted from) the deployed
 * image's partitions. `files` from the step arguments are appended to node.properties.inject_files;
 * each is {path, partition?, content? (base64, or a URL with {node[...]} / {ports[...]} fields),
 * deleted?, mode?, dirmode?, owner?, group?}.
 *
 * The partition is a number on the install device, a /dev path of one of its partitions, or a
 * filesystem/partition UUID or label; without one, the partitions are mounted in turn until one
 * holds the first directory of the path (IPA's find_partition_with_path).
 *
 * Writing never leaves the mounted filesystem: '..' is refused, and symlinks inside the image are
 * resolved as the image would see them (absolute targets relative to its root), so a link to
 * /etc cannot redirect a write into the ramdisk.
 */
import {randomBytes} from 'node:crypto'
import {chmod, chown, lstat, mkdir, open, readlink, rename, rmdir, stat, unlink} from 'node:fs/promises'
import path from 'node:path'
import type {AgentConfig} from '../config.js'
import {CommandExecutionError, DeviceNotFound, InvalidCommandParamsError, RESTError} from '../errors.js'
import {assertDeviceAllowed} from '../disk/allowlist.js'
import type {Logger} from '../log.js'
import {withMount} from './bootloader.js'
import {partitionNumber, partitionPath, partitionTable} from '../disk/partitions.js'
import {probeDevice} from '../disk/probe.js'
import {downloadSettings, getWithRetries} from './download.js'

export interface InjectContext {
  config: AgentConfig
  log: Logger
  /** get_os_install_device through the managers. */
  installDevice: () => Promise<string>
}

export interface InjectFile {
  path: string
  partition?: string | number | null
  content?: string | null
  deleted?: boolean | null
  mode?: number
  dirmode?: number
  owner?: number
  group?: number
}

const FIELDS = new Set(['path', 'partition', 'content', 'deleted', 'mode', 'dirmode', 'owner', 'group'])
const LVM_TYPES = new Set(['8e', 'e6d6d379-f507-44c2-a23c-238f2a3df928'])
const SWAP_TYPES = new Set(['82', '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f'])

function repr(v: unknown): string {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const o = {...(v as Record<string, unknown>)}
    if (typeof o.content === 'string' && o.content.length > 64) o.content = `${o.content.slice(0, 32)}…(${o.content.length} chars)`
    return JSON.stringify(o)
  }
  return JSON.stringify(v)
}

/** IPA's _validate_files, plus: no '..' in paths, and content or deleted. */
export function validateFiles(fromProperties: unknown, fromArgs: unknown): InjectFile[] {
  if (!Array.isArray(fromProperties)) throw new InvalidCommandParamsError(`The \`inject_files\` node property must be a list, got ${typeName(fromProperties)}`)
  if (!Array.isArray(fromArgs)) throw new InvalidCommandParamsError(`The \`files\` argument must be a list, got ${typeName(fromArgs)}`)
  const files = [...fromProperties, ...fromArgs] as unknown[]
  const failures: string[] = []
  for (const fl of files) {
    if (!fl || typeof fl !== 'object' || Array.isArray(fl)) {
      failures.push(`expected an object, got ${repr(fl)}`)
      continue
    }
    const f = fl as Record<string, unknown>
    const unknown = Object.keys(f).filter((k) => !FIELDS.has(k))
    if (unknown.length) failures.push(`unexpected fields in ${repr(f)}: ${unknown.join(', ')}`)
    if (!f.path || typeof f.path !== 'string') failures.push(`expected a path in ${repr(f)}`)
    else if (path.posix.dirname(f.path) === '/' && !f.partition) failures.push(`${repr(f)} in root directory requires "partition"`)
    else if (f.path.endsWith('/')) failures.push(`directories not supported for ${repr(f)}`)
    else if (f.path.split('/').includes('..')) failures.push(`'..' is not allowed in the path of ${repr(f)}`)
    if (f.content && f.deleted) failures.push(`content cannot be used with deleted in ${repr(f)}`)
    else if (!f.deleted && (typeof f.content !== 'string' || !f.content)) failures.push(`expected content (base64 or a URL) or deleted in ${repr(f)}`)
    for (const field of ['owner', 'group', 'mode', 'dirmode']) {
      if (field in f && !(typeof f[field] === 'number' && Number.isInteger(f[field]))) failures.push(`${field} must be a number in ${repr(f)}`)
    }
    if (f.partition !== undefined && f.partition !== null && typeof f.partition !== 'string' && typeof f.partition !== 'number') {
      failures.push(`partition must be a number or a string in ${repr(f)}`)
    }
  }
  if (failures.length) throw new InvalidCommandParamsError(`Validation of files failed: ${failures.join('; ')}`)
  return files as InjectFile[]
}

function typeName(v: unknown): string {
  if (v === null || v === undefined) return 'NoneType'
  if (Array.isArray(v)) return 'list'
  if (typeof v === 'object') return 'dict'
  if (typeof v === 'string') return 'str'
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float'
  return typeof v
}

interface Part {
  device: string
  number: number
  type: string
}

async function listPartitions(device: string): Promise<Part[]> {
  const table = await partitionTable(device)
  return (table?.partitions ?? []).map((p) => {
    const n = partitionNumber(p.node)
    return {device: partitionPath(device, n), number: n, type: p.type.toLowerCase()}
  })
}

/** The partition a `partition` specifier names, on the install device only. */
export async function resolvePartition(device: string, spec: string | number): Promise<string> {
  const parts = await listPartitions(device)
  const s = String(spec).trim()
  if (/^\d+$/.test(s)) {
    const p = parts.find((x) => x.number === Number(s))
    if (!p) throw new DeviceNotFound(`No partition ${s} on device ${device} (it has ${parts.map((x) => x.number).join(', ') || 'none'})`)
    return p.device
  }
  if (s.startsWith('/dev/')) {
    const p = parts.find((x) => x.device === s)
    if (!p) throw new DeviceNotFound(`${s} is not a partition of the install device ${device}`)
    return p.device
  }
  const want = s.replace(/^(UUID|PARTUUID|LABEL|PARTLABEL)=/i, '').toLowerCase()
  for (const p of parts) {
    const t = await probeDevice(p.device)
    if ([t.UUID, t.PART_ENTRY_UUID, t.LABEL, t.PART_ENTRY_NAME].some((v) => v !== undefined && v.toLowerCase() === want)) return p.device
  }
  throw new DeviceNotFound(`No partition with UUID or label ${s} found on device ${device}`)
}

/**
 * `rel` (relative, no '..') inside the filesystem mounted at `root`, with symlinks resolved as the
 * image sees them (an absolute target starts at `root`). Missing directories are created when
 * `create` is set; returns the host path and whether the leaf directory was created.
 */
export async function resolveInRoot(root: string, rel: string, create: boolean): Promise<{file: string; createdDir?: string}> {
  const pending = rel.split('/').filter((c) => c && c !== '.')
  const done: string[] = []
  let createdDir: string | undefined
  let hops = 0
  while (pending.length) {
    const comp = pending.shift()!
    if (comp === '..') {
      done.pop() // only reachable through a symlink's target: never above the image's root
      continue
    }
    const host = path.join(root, ...done, comp)
    let st
    try {
      st = await lstat(host)
    } catch {
      st = undefined
    }
    if (st?.isSymbolicLink()) {
      if (++hops > 40) throw new CommandExecutionError(`Too many levels of symbolic links in ${rel}`)
      const target = await readlink(host)
      if (target.startsWith('/')) done.length = 0
      pending.unshift(...target.split('/').filter((c) => c && c !== '.'))
      continue
    }
    if (pending.length === 0) {
      // the file itself
      done.push(comp)
      break
    }
    if (!st) {
      if (!create) return {file: path.join(root, ...done, comp, ...pending)}
      await mkdir(host)
      createdDir = host
    } else if (!st.isDirectory()) {
      throw new CommandExecutionError(`${path.posix.join('/', ...done, comp)} is not a directory in the image`)
    }
    done.push(comp)
  }
  const file = path.join(root, ...done)
  if (file !== root && !file.startsWith(root.endsWith('/') ? root : `${root}/`)) throw new CommandExecutionError(`${rel} resolves outside the image`)
  // The leaf directory counts as created only if it is the file's parent.
  return {file, createdDir: createdDir && path.dirname(file) === createdDir ? createdDir : undefined}
}

/** Python's str.format with node / ports fields ({node[uuid]}, {ports[0][address]}). */
export function formatUrl(url: string, node: Record<string, unknown>, ports: unknown[]): string {
  return url.replace(/\{(node|ports)((?:\[[^\]]*\])*)\}/g, (whole, base: string, idx: string) => {
    let v: unknown = base === 'node' ? node : ports
    for (const m of idx.matchAll(/\[([^\]]*)\]/g)) {
      const key = m[1]!
      if (v === null || v === undefined) break
      v = Array.isArray(v) && /^\d+$/.test(key) ? v[Number(key)] : (v as Record<string, unknown>)[key]
    }
    if (v === undefined) throw new InvalidCommandParamsError(`Unknown field ${whole} in the URL ${url}`)
    return String(v)
  })
}

/**
 * The content into `tmp` (a new file next to the destination), synced. The caller renames it
 * into place, so a failing URL or bad base64 never leaves an empty or partial file behind.
 */
async function writeContent(
  ctx: InjectContext,
  name: string,
  tmp: string,
  content: string,
  node: Record<string, unknown>,
  ports: unknown[],
  verifyCa: unknown,
): Promise<void> {
  // Decode or connect before the file exists.
  let data: Buffer | undefined
  let body: AsyncIterable<unknown> | undefined
  if (content.includes('://')) {
    const url = formatUrl(content, node, ports)
    const settings = {...downloadSettings(ctx.config, ctx.log), ...(verifyCa === false ? {insecure: true} : {})}
    body = await getWithRetries(url, name, {info: {}, settings})
  } else {
    const text = content.replace(/\s+/g, '')
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error('content is not valid base64')
    data = Buffer.from(text, 'base64')
  }
  const fh = await open(tmp, 'wx', 0o644)
  try {
    if (data) {
      await fh.write(data, 0, data.length, 0)
    } else {
      let pos = 0
      for await (const chunk of body!) {
        await fh.write(chunk as Buffer, 0, (chunk as Buffer).length, pos)
        pos += (chunk as Buffer).length
      }
    }
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** fsync a directory (the rename into it is then durable). */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * Write `file` only once its content is complete: into a temporary file next to it (same
 * filesystem), synced, given its mode and owner (the existing file's when none is asked for),
 * then renamed over it and the directory synced. On failure nothing is left behind and an
 * existing file is unchanged.
 */
async function writeAtomically(
  ctx: InjectContext,
  fl: InjectFile,
  file: string,
  node: Record<string, unknown>,
  ports: unknown[],
  verifyCa: unknown,
): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.rdk-${randomBytes(4).toString('hex')}`)
  try {
    await writeContent(ctx, path.basename(file), tmp, fl.content!, node, ports, verifyCa)
    const old = await stat(file).catch(() => undefined)
    const mode = fl.mode ?? (old ? old.mode & 0o7777 : undefined)
    if (mode !== undefined) await chmod(tmp, mode)
    const uid = fl.owner ?? old?.uid
    const gid = fl.group ?? old?.gid
    if (uid !== undefined || gid !== undefined) await chown(tmp, uid ?? -1, gid ?? -1)
    await rename(tmp, file)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw err
  }
  await syncDir(path.dirname(file))
}

async function injectOne(
  ctx: InjectContext,
  fl: InjectFile,
  dir: string,
  rel: string,
  node: Record<string, unknown>,
  ports: unknown[],
  verifyCa: unknown,
): Promise<void> {
  const {log} = ctx
  try {
    if (fl.deleted) {
      const {file} = await resolveInRoot(dir, rel, false)
      await unlink(file).catch(() => undefined)
      log.info('inject_files: deleted', {path: fl.path})
      return
    }
    const {file, createdDir} = await resolveInRoot(dir, rel, true)
    if (createdDir && fl.dirmode !== undefined) await chmod(createdDir, fl.dirmode)
    try {
      await writeAtomically(ctx, fl, file, node, ports, verifyCa)
    } catch (err) {
      // The leaf directory made for this file goes too (only if still empty).
      if (createdDir) await rmdir(createdDir).catch(() => undefined)
      throw err
    }
    log.info('inject_files: written', {path: fl.path})
  } catch (err) {
    if (err instanceof InvalidCommandParamsError) throw err
    const e = err as Error
    throw new CommandExecutionError(`Failed to process file ${repr(fl)}. ${e.name}: ${e instanceof RESTError ? e.details : e.message}`)
  }
}

/** Mount partitions of `device` in turn until one holds directory `detect`; run fn there. */
async function withPartitionHolding(ctx: InjectContext, device: string, detect: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const parts = await listPartitions(device)
  for (const p of parts) {
    if (LVM_TYPES.has(p.type) || SWAP_TYPES.has(p.type)) {
      ctx.log.debug('inject_files: skipping partition', {partition: p.device, type: p.type})
      continue
    }
    let found = false
    try {
      await withMount(
        p.device,
        async (dir) => {
          const {file} = await resolveInRoot(dir, detect, false)
          let st
          try {
            st = await lstat(file)
          } catch {
            return
          }
          if (!st.isDirectory()) return
          found = true
          ctx.log.info('inject_files: path found on partition', {path: detect, partition: p.device})
          await fn(dir)
        },
        {log: ctx.log},
      )
    } catch (err) {
      if (found) throw err
      ctx.log.warn('inject_files: failure when inspecting partition', {partition: p.device, err: (err as Error).message})
    }
    if (found) return
  }
  throw new DeviceNotFound(`No partition found with path /${detect}, scanned: ${JSON.stringify(parts.map((p) => p.device))}`)
}

/** The inject_files deploy step. */
export async function injectFiles(ctx: InjectContext, node: Record<string, unknown>, files: unknown, verifyCa?: unknown, stepPorts?: unknown[]): Promise<null> {
  const props = (node?.properties ?? {}) as Record<string, unknown>
  const list = validateFiles(props.inject_files ?? [], files ?? [])
  if (!list.length) {
    ctx.log.info('No files to inject')
    return null
  }
  // {ports[...]} in URLs: the step's ports (as IPA), when the caller passes them.
  const ports = Array.isArray(stepPorts) ? stepPorts : []
  const device = await ctx.installDevice()
  assertDeviceAllowed(device, ctx.config.deviceAllowlist)
  for (const fl of list) {
    const rel = path.posix.normalize(fl.path.replace(/^\/+/, ''))
    if (fl.partition !== undefined && fl.partition !== null && fl.partition !== '') {
      const part = await resolvePartition(device, fl.partition)
      await withMount(part, (dir) => injectOne(ctx, fl, dir, rel, node, ports, verifyCa), {log: ctx.log})
    } else {
      const slash = rel.indexOf('/')
      if (slash < 0) throw new InvalidCommandParamsError(`Invalid path ${fl.path}, must be an absolute path to a file`)
      const detect = rel.slice(0, slash)
      await withPartitionHolding(ctx, device, detect, (dir) => injectOne(ctx, fl, dir, rel, node, ports, verifyCa))
    }
  }
  return null
}
