/**
 * A small ELF64 (little-endian) reader and the shared-library closure of a set of executables inside
 * an extracted tree, computed the way glibc's ld.so would find libraries in an image that has no
 * /etc/ld.so.cache: DT_RUNPATH of the object itself, else DT_RPATH of the object and of the objects
 * that loaded it, then the system directories. `$ORIGIN` (and `${ORIGIN}`) in RUNPATH/RPATH is
 * expanded; `$LIB` is x86_64-linux-gnu's `lib`; glibc-hwcaps subdirectories and ld.so.conf are not
 * consulted (nothing in the tiny image uses them, and without ldconfig's cache the loader would not
 * either). Symlinks are followed chroot-style inside the tree and reported, so a copy of the result
 * into an image loads exactly like the tree did.
 */
import {closeSync, existsSync, fstatSync, lstatSync, openSync, readdirSync, readFileSync, readSync, statSync} from 'node:fs'
import {posix} from 'node:path'
import {resolveInRoot, normaliseImagePath} from './sink.js'

export const PT_LOAD = 1
export const PT_DYNAMIC = 2
export const PT_INTERP = 3
const DT_NULL = 0
const DT_NEEDED = 1
const DT_STRTAB = 5
const DT_STRSZ = 10
const DT_SONAME = 14
const DT_RPATH = 15
const DT_RUNPATH = 29

export const EM_X86_64 = 62

export class ElfFormatError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`)
    this.name = 'ElfFormatError'
  }
}

export interface ElfSection {
  name: string
  type: number
  offset: number
  size: number
  addr: number
}

export interface ElfInfo {
  /** ET_EXEC 2, ET_DYN 3, ET_REL 1 (kernel modules). */
  type: number
  machine: number
  interpreter?: string
  needed: string[]
  soname?: string
  runpath: string[]
  rpath: string[]
  /** Has a PT_DYNAMIC segment (false for static executables and relocatable objects). */
  dynamic: boolean
  sections: ElfSection[]
}

/** Random access to a file's bytes. */
interface Reader {
  size: number
  read(offset: number, length: number): Buffer
}

function bufferReader(buf: Buffer): Reader {
  return {size: buf.length, read: (o, l) => buf.subarray(o, Math.min(buf.length, o + l))}
}

function fileReader(fd: number): Reader {
  const size = fstatSync(fd).size
  return {
    size,
    read(offset, length) {
      const len = Math.max(0, Math.min(length, size - offset))
      const b = Buffer.alloc(len)
      let done = 0
      while (done < len) {
        const n = readSync(fd, b, done, len - done, offset + done)
        if (n <= 0) break
        done += n
      }
      return b.subarray(0, done)
    },
  }
}

/** True if the bytes start with the ELF magic. */
export function isElf(head: Buffer): boolean {
  return head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46
}

function u64(b: Buffer, o: number): number {
  const v = b.readBigUInt64LE(o)
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('64-bit value too large')
  return Number(v)
}

function cstr(b: Buffer, o: number): string {
  const end = b.indexOf(0, o)
  return b.toString('utf8', o, end < 0 ? b.length : end)
}

function parse(r: Reader, file: string): ElfInfo {
  const h = r.read(0, 64)
  if (!isElf(h)) throw new ElfFormatError(file, 'not an ELF file')
  if (h.length < 64 || h[4] !== 2) throw new ElfFormatError(file, 'not a 64-bit ELF file (only ELF64 is supported)')
  if (h[5] !== 1) throw new ElfFormatError(file, 'not a little-endian ELF file')
  const type = h.readUInt16LE(16)
  const machine = h.readUInt16LE(18)
  const phoff = u64(h, 32)
  const shoff = u64(h, 40)
  const phentsize = h.readUInt16LE(54)
  const phnum = h.readUInt16LE(56)
  const shentsize = h.readUInt16LE(58)
  const shnum = h.readUInt16LE(60)
  const shstrndx = h.readUInt16LE(62)

  const loads: {vaddr: number; offset: number; filesz: number}[] = []
  let interpreter: string | undefined
  let dyn: {offset: number; size: number} | undefined
  if (phnum) {
    if (phentsize < 56) throw new ElfFormatError(file, 'bad program header size')
    const ph = r.read(phoff, phnum * phentsize)
    if (ph.length < phnum * phentsize) throw new ElfFormatError(file, 'truncated program headers')
    for (let i = 0; i < phnum; i++) {
      const o = i * phentsize
      const ptype = ph.readUInt32LE(o)
      const offset = u64(ph, o + 8)
      const vaddr = u64(ph, o + 16)
      const filesz = u64(ph, o + 32)
      if (ptype === PT_LOAD) loads.push({vaddr, offset, filesz})
      else if (ptype === PT_INTERP) interpreter = cstr(r.read(offset, filesz), 0)
      else if (ptype === PT_DYNAMIC) dyn = {offset, size: filesz}
    }
  }

  const sections: ElfSection[] = []
  if (shnum && shoff) {
    if (shentsize < 64) throw new ElfFormatError(file, 'bad section header size')
    const sh = r.read(shoff, shnum * shentsize)
    if (sh.length < shnum * shentsize) throw new ElfFormatError(file, 'truncated section headers')
    const raw = []
    for (let i = 0; i < shnum; i++) {
      const o = i * shentsize
      raw.push({nameOff: sh.readUInt32LE(o), type: sh.readUInt32LE(o + 4), addr: u64(sh, o + 16), offset: u64(sh, o + 24), size: u64(sh, o + 32)})
    }
    const strtab = shstrndx < raw.length ? r.read(raw[shstrndx]!.offset, raw[shstrndx]!.size) : Buffer.alloc(0)
    for (const s of raw) sections.push({name: cstr(strtab, s.nameOff), type: s.type, offset: s.offset, size: s.size, addr: s.addr})
  }

  const needed: string[] = []
  const runpath: string[] = []
  const rpath: string[] = []
  let soname: string | undefined
  if (dyn) {
    const d = r.read(dyn.offset, dyn.size)
    const tags: {tag: number; val: number}[] = []
    let strtabAddr: number | undefined
    let strsz = 0
    for (let o = 0; o + 16 <= d.length; o += 16) {
      const tag = Number(d.readBigInt64LE(o))
      if (tag === DT_NULL) break
      const val = u64(d, o + 8)
      if (tag === DT_STRTAB) strtabAddr = val
      else if (tag === DT_STRSZ) strsz = val
      else tags.push({tag, val})
    }
    if (tags.length && strtabAddr === undefined) throw new ElfFormatError(file, 'dynamic section without DT_STRTAB')
    if (strtabAddr !== undefined) {
      const seg = loads.find((l) => strtabAddr! >= l.vaddr && strtabAddr! < l.vaddr + l.filesz)
      if (!seg) throw new ElfFormatError(file, 'DT_STRTAB is outside every PT_LOAD segment')
      const strtab = r.read(seg.offset + (strtabAddr - seg.vaddr), strsz || 1 << 20)
      for (const {tag, val} of tags) {
        if (tag === DT_NEEDED) needed.push(cstr(strtab, val))
        else if (tag === DT_SONAME) soname = cstr(strtab, val)
        else if (tag === DT_RUNPATH) runpath.push(...cstr(strtab, val).split(':').filter(Boolean))
        else if (tag === DT_RPATH) rpath.push(...cstr(strtab, val).split(':').filter(Boolean))
      }
    }
  }
  return {
    type,
    machine,
    ...(interpreter !== undefined ? {interpreter} : {}),
    needed,
    ...(soname !== undefined ? {soname} : {}),
    runpath,
    rpath,
    dynamic: Boolean(dyn),
    sections,
  }
}

/** Parse an ELF64 image held in memory. */
export function parseElf(buf: Buffer, name = 'ELF image'): ElfInfo {
  return parse(bufferReader(buf), name)
}

/** Parse an ELF64 file, reading only its headers, dynamic segment and string table. */
export function parseElfFile(path: string): ElfInfo {
  const fd = openSync(path, 'r')
  try {
    return parse(fileReader(fd), path)
  } finally {
    closeSync(fd)
  }
}

/** Contents of a named section (e.g. `.modinfo` of a kernel module), or undefined. */
export function readElfSection(buf: Buffer, name: string, file = 'ELF image'): Buffer | undefined {
  const s = parseElf(buf, file).sections.find((x) => x.name === name)
  return s ? buf.subarray(s.offset, s.offset + s.size) : undefined
}

/** A symbol of `.dynsym` (survives `strip --strip-all`) and where its bytes are in the file. */
export interface ElfSymbol {
  name: string
  /** Virtual address (st_value) and size in bytes (st_size). */
  value: number
  size: number
  /** File offset of the symbol's bytes, when they lie in a section with file contents (not .bss). */
  fileOffset?: number
}

const SHT_NOBITS = 8

/** The dynamic symbols of an ELF64 image whose names satisfy `match` (all of them by default). */
export function dynamicSymbols(buf: Buffer, match: (name: string) => boolean = () => true, file = 'ELF image'): ElfSymbol[] {
  const info = parseElf(buf, file)
  const dynsym = info.sections.find((s) => s.name === '.dynsym')
  const dynstr = info.sections.find((s) => s.name === '.dynstr')
  if (!dynsym || !dynstr) return []
  const strtab = buf.subarray(dynstr.offset, dynstr.offset + dynstr.size)
  const out: ElfSymbol[] = []
  for (let o = dynsym.offset; o + 24 <= dynsym.offset + dynsym.size; o += 24) {
    const name = cstr(strtab, buf.readUInt32LE(o))
    if (!name || !match(name)) continue
    const value = u64(buf, o + 8)
    const size = u64(buf, o + 16)
    const sec = info.sections.find((s) => s.type !== SHT_NOBITS && s.addr && value >= s.addr && value + size <= s.addr + s.size)
    out.push({name, value, size, ...(sec ? {fileOffset: sec.offset + (value - sec.addr)} : {})})
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// closure

/** Where glibc looks without ld.so.cache, /usr first (the tree is usr-merged, so both spellings are the same files). */
export const DEFAULT_LIBRARY_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib', '/lib/x86_64-linux-gnu', '/lib']

export class MissingLibraryError extends Error {
  constructor(
    readonly binary: string,
    readonly soname: string,
    readonly searched: string[],
    readonly hint?: string,
  ) {
    super(`${binary} needs ${soname}, which is not in the extracted tree (searched ${searched.join(', ')})${hint ? `; ${hint}` : ''}`)
    this.name = 'MissingLibraryError'
  }
}

export class MissingExecutableError extends Error {
  constructor(readonly path: string) {
    super(`${path} is not a file in the extracted tree`)
    this.name = 'MissingExecutableError'
  }
}

export interface ClosureFile {
  /** Image path (no leading '/'). */
  path: string
  type: 'file' | 'symlink'
  /** Symlink target, as stored. */
  target?: string
  role: 'executable' | 'library' | 'interpreter' | 'link'
}

export interface ClosureObject {
  /** Real (symlink-free) image path. */
  path: string
  /** soname → real image path it resolved to. */
  libraries: Record<string, string>
  interpreter?: string
  /** `#!` interpreter of a script (not followed if missing from the tree; see scriptInterpreters). */
  script?: string
}

export interface ClosureResult {
  /** Every file and symlink needed, sorted by path. */
  files: ClosureFile[]
  /** Per loaded object, how its DT_NEEDED entries resolved. */
  objects: ClosureObject[]
  /** `#!` interpreters of wanted scripts that are not in the tree (expected to come from elsewhere, e.g. busybox's /bin/sh). */
  scriptInterpreters: {script: string; interpreter: string}[]
}

export interface ClosureOptions {
  /** The extracted tree (a real directory). */
  root: string
  /** Library search directories after RUNPATH/RPATH; default DEFAULT_LIBRARY_DIRS. */
  searchDirs?: string[]
  /** Owning package of an image path, to name a provider in MissingLibraryError. */
  ownerOf?: (path: string) => string | undefined
  /** Sonames allowed to be missing (e.g. optional plugins); they are reported in objects only. */
  allowMissing?: string[]
  /** ELF machine to require (default EM_X86_64); a library of another machine/class is skipped, like ld.so does. */
  machine?: number
}

function expandOrigin(entry: string, origin: string): string {
  return entry
    .replace(/\$\{ORIGIN\}|\$ORIGIN/g, origin)
    .replace(/\$\{LIB\}|\$LIB/g, 'lib')
    .replace(/\$\{PLATFORM\}|\$PLATFORM/g, 'x86_64')
}

/**
 * The minimal set of files that makes `executables` (image paths in `root`) run: the executables,
 * the libraries they need (transitively), the ELF interpreter, and every symlink on the way.
 */
export function elfClosure(executables: readonly string[], opts: ClosureOptions): ClosureResult {
  const root = opts.root
  const machine = opts.machine ?? EM_X86_64
  const searchDirs = opts.searchDirs ?? DEFAULT_LIBRARY_DIRS
  const files = new Map<string, ClosureFile>()
  const objects = new Map<string, ClosureObject>()
  const scriptInterpreters: {script: string; interpreter: string}[] = []
  const infoCache = new Map<string, ElfInfo | null>()

  /** Resolve an image path; record traversed symlinks; undefined if it does not exist as a regular file. */
  function resolve(path: string, record: boolean): string | undefined {
    const links: [string, string][] = []
    const real = resolveInRoot(root, normaliseImagePath(path).split('/'), true, (l, t) => links.push([l, t])).join('/')
    const host = posix.join(root, real)
    if (!real || !existsSync(host) || !statSync(host).isFile()) return undefined
    if (record) for (const [l, t] of links) if (!files.has(l)) files.set(l, {path: l, type: 'symlink', target: t, role: 'link'})
    return real
  }

  function info(real: string): ElfInfo | null {
    let i = infoCache.get(real)
    if (i === undefined) {
      const host = posix.join(root, real)
      const fd = openSync(host, 'r')
      try {
        const head = Buffer.alloc(4)
        readSync(fd, head, 0, 4, 0)
        i = isElf(head) ? parse(fileReader(fd), `/${real}`) : null
      } finally {
        closeSync(fd)
      }
      infoCache.set(real, i)
    }
    return i
  }

  /** Record a file; a more specific role (executable, interpreter) wins over 'library'. */
  function addFile(real: string, role: ClosureFile['role']): void {
    const prev = files.get(real)
    if (!prev || (prev.role === 'library' && role !== 'library')) files.set(real, {path: real, type: 'file', role})
  }

  const queue: {real: string; asLoaded: string; rpaths: string[][]; role: ClosureFile['role']}[] = []
  for (const exe of executables) {
    const real = resolve(exe, true)
    if (!real) throw new MissingExecutableError(`/${normaliseImagePath(exe)}`)
    queue.push({real, asLoaded: real, rpaths: [], role: 'executable'})
  }

  while (queue.length) {
    const {real, asLoaded, rpaths, role} = queue.shift()!
    if (objects.has(real)) {
      if (role === 'executable') addFile(real, role)
      continue
    }
    addFile(real, role)
    const obj: ClosureObject = {path: real, libraries: {}}
    objects.set(real, obj)
    const elf = info(real)
    if (!elf) {
      const host = posix.join(root, real)
      const fd = openSync(host, 'r')
      const head = Buffer.alloc(256)
      const n = readSync(fd, head, 0, 256, 0)
      closeSync(fd)
      const text = head.subarray(0, n).toString('latin1')
      if (text.startsWith('#!')) {
        const interp = text.slice(2).split('\n')[0]!.trim().split(/\s+/)[0]!
        obj.script = interp
        const r = resolve(interp, true)
        if (r) queue.push({real: r, asLoaded: r, rpaths: [], role: 'executable'})
        else scriptInterpreters.push({script: `/${real}`, interpreter: interp})
        continue
      }
      if (role === 'executable') continue // data file wanted explicitly
      throw new ElfFormatError(`/${real}`, 'is needed as a library but is not an ELF file')
    }
    if (elf.machine !== machine) throw new ElfFormatError(`/${real}`, `is for ELF machine ${elf.machine}, not ${machine}`)
    if (elf.interpreter) {
      const r = resolve(elf.interpreter, true)
      if (!r) throw new MissingLibraryError(`/${real}`, elf.interpreter, [elf.interpreter], providerHint(elf.interpreter))
      obj.interpreter = r
      addFile(r, 'interpreter')
      if (!objects.has(r)) objects.set(r, {path: r, libraries: {}})
    }
    const origin = posix.dirname(`/${role === 'executable' ? real : asLoaded}`)
    const ownRunpath = elf.runpath.map((d) => expandOrigin(d, origin))
    const ownRpath = elf.rpath.map((d) => expandOrigin(d, origin))
    // DT_RPATH chain: this object's, then its loader's, … up to the executable; an object with
    // DT_RUNPATH contributes nothing (its DT_RPATH is ignored) and searches only its own DT_RUNPATH
    const chain = [elf.runpath.length ? [] : ownRpath, ...rpaths]
    for (const soname of elf.needed) {
      let dirs: string[]
      let found: string | undefined
      let foundAs: string | undefined
      if (soname.includes('/')) {
        dirs = [posix.dirname(soname)]
        found = resolve(soname, false)
        foundAs = soname
      } else {
        dirs = [...(elf.runpath.length ? ownRunpath : chain.flat()), ...searchDirs]
        for (const dir of dirs) {
          const cand = posix.join(dir, soname)
          const r = resolve(cand, false)
          if (!r) continue
          const li = info(r)
          if (!li || li.machine !== machine) continue // ld.so skips incompatible objects
          found = r
          foundAs = cand
          break
        }
      }
      if (!found || !foundAs) {
        if (opts.allowMissing?.includes(soname)) continue
        throw new MissingLibraryError(`/${real}`, soname, dirs, providerHint(soname))
      }
      resolve(foundAs, true) // record the symlinks on the way
      obj.libraries[soname] = found
      queue.push({real: found, asLoaded: normaliseImagePath(foundAs), rpaths: chain, role: 'library'})
    }
  }

  function providerHint(soname: string): string | undefined {
    const base = posix.basename(soname)
    const owners = new Set<string>()
    const places: string[] = []
    walkTree(root, '', (p) => {
      if (posix.basename(p) !== base) return
      places.push(`/${p}`)
      const o = opts.ownerOf?.(p)
      if (o) owners.add(o)
    })
    if (places.length) {
      return `it is in the tree at ${places.slice(0, 3).join(', ')}${owners.size ? ` (package ${[...owners].join(', ')})` : ''} but not on the library search path`
    }
    const host = hostPackageProviding(base)
    return host ? `the Debian package ${host} provides it (add it to the package set)` : undefined
  }

  return {
    files: [...files.values()].sort((a, b) => a.path.localeCompare(b.path)),
    objects: [...objects.values()],
    scriptInterpreters,
  }
}

function walkTree(root: string, dir: string, visit: (path: string) => void, depth = 0): void {
  if (depth > 12) return
  let names: string[]
  try {
    names = readdirSync(posix.join(root, dir))
  } catch {
    return
  }
  for (const n of names) {
    const p = dir ? `${dir}/${n}` : n
    visit(p)
    try {
      if (lstatSync(posix.join(root, p)).isDirectory()) walkTree(root, p, visit, depth + 1)
    } catch {
      // vanished
    }
  }
}

/**
 * Best effort: which installed host package ships a file named `basename` in a library directory
 * (a `dpkg -S` over /var/lib/dpkg/info/*.list). Only a hint for error messages.
 */
export function hostPackageProviding(basename: string, infoDir = '/var/lib/dpkg/info'): string | undefined {
  let names: string[]
  try {
    names = readdirSync(infoDir).filter((n) => n.endsWith('.list'))
  } catch {
    return undefined
  }
  const re = new RegExp(`^/(usr/)?lib(64|32)?(/[^/]+)?/${basename.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm')
  for (const n of names) {
    try {
      if (re.test(readFileSync(posix.join(infoDir, n), 'utf8'))) return n.slice(0, -'.list'.length).split(':')[0]
    } catch {
      // unreadable
    }
  }
  return undefined
}
