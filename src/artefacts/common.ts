/**
 * What every boot-artefact writer (ISO, PXE tree, iPXE script, bundles) shares: input checks that
 * fail with a specific message before any work, the kernel command line baked into the boot menus,
 * EJS templates from `templates/`, fixed timestamps, and atomic outputs (a temporary name in the
 * output's own directory, renamed at the end; removed on any error).
 */
import {createHash, randomBytes} from 'node:crypto'
import {constants as fsConstants, createReadStream} from 'node:fs'
import {access, open, readdir, readFile, rename, rm, stat, utimes} from 'node:fs/promises'
import {basename, dirname, join, relative} from 'node:path'
import {fileURLToPath} from 'node:url'
import {createGunzip} from 'node:zlib'
import ejs from 'ejs'
import {runBuffer} from '../common/exec.js'
import {UserError} from '../common/errors.js'

/**
 * A bad input or an output that cannot be written: the message says it all. A UserError (exit 2),
 * so `rdk build` and `rdk iso` print it without a stack trace.
 */
export class ArtefactError extends UserError {
  constructor(message: string) {
    super(message)
    this.name = 'ArtefactError'
  }
}

/** Where the EJS templates live: `templates/` at the package root (next to src/ and dist/). */
export const TEMPLATES_DIR = fileURLToPath(new URL('../../templates/', import.meta.url))

/** Render `templates/<name>` with `data` (EJS, strict: a missing variable is an error). */
export async function renderTemplate(name: string, data: Record<string, unknown>): Promise<string> {
  const file = join(TEMPLATES_DIR, name)
  const text = await readFile(file, 'utf8')
  return ejs.render(text, data, {filename: file, async: false})
}

/** Kernel arguments as rdk's build spec holds them (K → V, null for a bare word) or as words. */
export type KernelArgs = Record<string, string | null> | readonly string[]

/** Words of a kernel command line, checked: printable ASCII, nothing a boot loader would misread. */
export function kernelArgWords(args: KernelArgs | undefined): string[] {
  const words = Array.isArray(args)
    ? [...(args as readonly string[])]
    : Object.entries((args ?? {}) as Record<string, string | null>).map(([k, v]) => (v === null ? k : /\s/.test(v) ? `${k}="${v}"` : `${k}=${v}`))
  for (const w of words) {
    // Newlines end a config line; GRUB expands $ and ; inside a menu entry; syslinux has no quoting.
    if (!/^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/.test(w) || /[$;`\\{}]/.test(w)) {
      throw new ArtefactError(`kernel argument ${JSON.stringify(w)} cannot be baked into a boot menu (printable ASCII only; no $ ; \` \\ { } or line breaks)`)
    }
  }
  return words
}

/** The serial + VGA consoles every rdk boot menu adds in front of the user's arguments (serial last = /dev/console). */
export const CONSOLE_ARGS = ['console=tty0', 'console=ttyS0,115200n8']

/** Join console args, fixed args and the user's words; the user's console= replaces ours. */
export function bootCmdline(fixed: readonly string[], user: readonly string[]): string {
  const userConsole = user.some((w) => w.startsWith('console='))
  return [...(userConsole ? [] : CONSOLE_ARGS), ...fixed.filter((f) => !user.some((w) => w.split('=')[0] === f.split('=')[0])), ...user].join(' ')
}

async function kindOf(p: string): Promise<'file' | 'dir' | 'other' | undefined> {
  try {
    const s = await stat(p)
    return s.isFile() ? 'file' : s.isDirectory() ? 'dir' : 'other'
  } catch {
    return undefined
  }
}

async function readHead(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.alloc(n)
    const {bytesRead} = await fh.read(buf, 0, n, 0)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

/** A kernel image: an x86 bzImage (boot header "HdrS") or an ELF vmlinux. */
export async function checkKernel(path: string | undefined): Promise<void> {
  if (!path) throw new ArtefactError('no kernel given (--kernel FILE)')
  const k = await kindOf(path)
  if (k !== 'file') throw new ArtefactError(`kernel ${path} ${k ? 'is not a regular file' : 'does not exist'}`)
  const head = await readHead(path, 0x210)
  const bz = head.length >= 0x206 && head.readUInt16LE(0x1fe) === 0xaa55 && head.toString('latin1', 0x202, 0x206) === 'HdrS'
  const elf = head.length >= 4 && head.readUInt32BE(0) === 0x7f454c46
  if (!bz && !elf) throw new ArtefactError(`kernel ${path} is not a Linux kernel image (no bzImage boot header, not an ELF file)`)
}

const CPIO_MAGICS = ['070701', '070702', '070707']

/** The compression of an initramfs (or 'cpio' for a bare archive); undefined if it is neither. */
export function initrdFormat(head: Buffer): 'cpio' | 'gzip' | 'xz' | 'zstd' | 'lz4' | 'bzip2' | 'lzma' | undefined {
  if (CPIO_MAGICS.includes(head.toString('latin1', 0, 6))) return 'cpio'
  const hex = head.subarray(0, 6).toString('hex')
  if (hex.startsWith('1f8b')) return 'gzip'
  if (hex === 'fd377a585a00') return 'xz'
  if (hex.startsWith('28b52ffd')) return 'zstd'
  if (hex.startsWith('02214c18')) return 'lz4'
  if (hex.startsWith('425a68')) return 'bzip2'
  if (hex.startsWith('5d0000')) return 'lzma'
  return undefined
}

async function gunzipHead(path: string, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let got = 0
    const src = createReadStream(path, {start: 0, end: 1 << 20})
    const gz = createGunzip()
    const done = (err?: Error) => {
      src.destroy()
      gz.destroy()
      if (err && got === 0) reject(err)
      else resolve(Buffer.concat(chunks).subarray(0, n))
    }
    gz.on('data', (c: Buffer) => {
      chunks.push(c)
      got += c.length
      if (got >= n) done()
    })
    gz.on('error', (e) => done(e))
    gz.on('end', () => done())
    src.on('error', (e) => done(e))
    src.pipe(gz)
  })
}

/**
 * An initramfs: a newc/odc cpio archive, bare or compressed with something the kernel unpacks. For
 * gzip, xz and zstd the start of the payload is unpacked to check that it really is a cpio archive.
 */
export async function checkInitrd(path: string | undefined): Promise<void> {
  if (!path) throw new ArtefactError('no initramfs given (--initrd FILE)')
  const k = await kindOf(path)
  if (k !== 'file') throw new ArtefactError(`initramfs ${path} ${k ? 'is not a regular file' : 'does not exist'}`)
  const head = await readHead(path, 16)
  const fmt = initrdFormat(head)
  if (!fmt) throw new ArtefactError(`initramfs ${path} is not a cpio archive (nor a gzip/xz/zstd/lz4/bzip2-compressed one)`)
  let inner: Buffer | undefined
  try {
    if (fmt === 'gzip') inner = await gunzipHead(path, 6)
    else if (fmt === 'xz' || fmt === 'zstd') {
      // The whole payload goes through the tool (run() takes no partial reads); fine for ramdisk sizes.
      const r = await runBuffer(fmt, fmt === 'xz' ? ['-dc', '--single-stream', '--', path] : ['-dcq', '--', path], {allowFailure: true})
      inner = r.stdout.subarray(0, 6)
    }
  } catch (err) {
    if ((err as Error).name === 'ToolMissingError') throw err
    throw new ArtefactError(`initramfs ${path}: cannot unpack its ${fmt} payload (${(err as Error).message})`)
  }
  if (inner !== undefined && !CPIO_MAGICS.includes(inner.toString('latin1', 0, 6))) {
    throw new ArtefactError(`initramfs ${path} is ${fmt}-compressed but its content is not a cpio archive`)
  }
}

/** An ISO 9660 volume label: up to 32 of A–Z 0–9 _ (lower case is upper-cased). */
export function volumeLabel(label: string): string {
  const l = label
    .toUpperCase()
    .replace(/[^A-Z0-9_]/g, '_')
    .slice(0, 32)
  if (!/[A-Z0-9]/.test(l)) throw new ArtefactError(`volume label '${label}' has no usable characters (A–Z, 0–9)`)
  return l
}

/** Set every file's and directory's times to `epoch` (seconds), deepest first. */
export async function setTimes(dir: string, epoch: number): Promise<void> {
  for (const e of await readdir(dir, {withFileTypes: true})) {
    const p = join(dir, e.name)
    if (e.isDirectory()) await setTimes(p, epoch)
    else await utimes(p, epoch, epoch)
  }
  await utimes(dir, epoch, epoch)
}

/** Every regular file under `dir`, relative, sorted by byte order (stable across machines). */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string) => {
    for (const e of await readdir(d, {withFileTypes: true})) {
      const p = join(d, e.name)
      if (e.isDirectory()) await walk(p)
      else if (e.isFile()) out.push(relative(dir, p))
      else throw new ArtefactError(`${p}: only regular files and directories can go into a boot artefact`)
    }
  }
  await walk(dir)
  return out.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
}

export async function sha256File(path: string): Promise<{sha256: string; size: number}> {
  const h = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(path, {highWaterMark: 1 << 20})) {
    h.update(chunk as Buffer)
    size += (chunk as Buffer).length
  }
  return {sha256: h.digest('hex'), size}
}

/**
 * Write `output` atomically: `write` gets a temporary path next to it (same directory, so the final
 * rename cannot cross filesystems); on success it is renamed into place, on any error removed.
 * Fails early, before any work, if the directory is missing or not writable.
 */
export async function atomicOutput<T>(output: string, write: (tmp: string) => Promise<T>, opts: {directory?: boolean} = {}): Promise<T> {
  const dir = dirname(output)
  const k = await kindOf(dir)
  if (k !== 'dir') throw new ArtefactError(`cannot write ${output}: ${dir} ${k ? 'is not a directory' : 'does not exist'}`)
  try {
    await access(dir, fsConstants.W_OK)
  } catch {
    throw new ArtefactError(`cannot write ${output}: directory ${dir} is not writable`)
  }
  const existing = await kindOf(output)
  if (!opts.directory && existing === 'dir') throw new ArtefactError(`cannot write ${output}: it is a directory`)
  if (opts.directory && existing && existing !== 'dir') throw new ArtefactError(`cannot write the directory ${output}: a file of that name exists`)
  const tmp = join(dir, `.${basename(output)}.rdk-tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
  try {
    const r = await write(tmp)
    if (opts.directory && existing) {
      // rename() cannot replace a non-empty directory: move the old one aside first, then drop it.
      const old = `${tmp}-old`
      await rename(output, old)
      await rename(tmp, output)
      await rm(old, {recursive: true, force: true})
    } else {
      await rename(tmp, output)
    }
    return r
  } catch (err) {
    await rm(tmp, {recursive: true, force: true})
    throw err
  }
}

/** Data files rdk takes from Debian packages (boot loaders), with the package that ships each. */
export const BOOT_FILES = {
  isolinuxBin: {path: '/usr/lib/ISOLINUX/isolinux.bin', pkg: 'isolinux'},
  isohybridMbr: {path: '/usr/lib/ISOLINUX/isohdpfx.bin', pkg: 'isolinux'},
  ldlinux: {path: '/usr/lib/syslinux/modules/bios/ldlinux.c32', pkg: 'syslinux-common'},
  pxelinux: {path: '/usr/lib/PXELINUX/pxelinux.0', pkg: 'pxelinux'},
  grubEfiModules: {path: '/usr/lib/grub/x86_64-efi/linux.mod', pkg: 'grub-efi-amd64-bin'},
  shimSigned: {path: '/usr/lib/shim/shimx64.efi.signed', pkg: 'shim-signed'},
  grubCdSigned: {path: '/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed', pkg: 'grub-efi-amd64-signed'},
  grubNetSigned: {path: '/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed', pkg: 'grub-efi-amd64-signed'},
} as const

/** The path of a boot-loader file, or an error naming the Debian package to install. */
export async function bootFile(which: keyof typeof BOOT_FILES): Promise<string> {
  const f = BOOT_FILES[which]
  if ((await kindOf(f.path)) !== 'file') throw new ArtefactError(`${f.path} not found: install the Debian package '${f.pkg}' (apt-get install ${f.pkg})`)
  return f.path
}
