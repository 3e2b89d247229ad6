/**
 * IPA's optional inspection collectors (`ipa-inspection-collectors=...,pci-devices,numa-topology,
 * dmi-decode,lldp`): the data each adds to the inspection POST, with IPA's keys and shapes so
 * ironic-inspector / Ironic's inspection hooks (pci_devices, numa_topology, ...) read it unchanged.
 *
 * Everything is read from sysfs (roots injectable, so tests use fixture trees) or from `dmidecode`.
 * Failure behaviour follows IPA: an unreadable PCI directory fails the collector, one bad device is
 * skipped; NUMA data that does not fit the expected layout is dropped as a whole with a warning
 * (IPA's IncompatibleNumaFormatError); dmidecode failing fails the collector.
 */
import {readdir, readFile, stat} from 'node:fs/promises'
import path from 'node:path'
import {run} from '../../common/exec.js'
import type {Logger} from '../log.js'

/** sysfs locations the collectors read; tests point them at a fixture tree. */
export interface CollectorRoots {
  pciDevices: string
  numaNodes: string
  classNet: string
}

export const DEFAULT_COLLECTOR_ROOTS: Readonly<CollectorRoots> = {
  pciDevices: '/sys/bus/pci/devices',
  numaNodes: '/sys/devices/system/node',
  classNet: '/sys/class/net',
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory()
  } catch {
    return false
  }
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile()
  } catch {
    return false
  }
}

/** Names sorted with their numeric parts compared as numbers (cpu2 before cpu10). */
function naturalSort(names: string[]): string[] {
  return names.sort((a, b) => a.localeCompare(b, 'en', {numeric: true}))
}

// -----------------------------------------------------------------------------------------------
// pci-devices

/** One entry of IPA's `pci_devices`: ids as sysfs shows them without the `0x` (e.g. `8086`). */
export interface PciDevice {
  vendor_id: string
  product_id: string
  class: string
  revision: string | null
  /** The PCI address (directory name), e.g. `0000:00:1f.2`. */
  bus: string
  /** sysfs numa_node as text (`-1` without NUMA), null when the file is absent. */
  numa_node_id: string | null
}

/** `0x8086\n` → `8086`: the part after the `x`, as IPA takes it; null when there is none. */
function hexAfterX(text: string): string | null {
  const part = text.trim().split('x')[1]
  return part === undefined ? null : part
}

/**
 * IPA's collect_pci_devices_info: every device directory under /sys/bus/pci/devices. A device
 * whose vendor/device/class cannot be read or has no `0x` form is skipped with a warning; an
 * unreadable root throws (the collector then reports the failure, like IPA's failures.add).
 */
export async function collectPciDevices(root = DEFAULT_COLLECTOR_ROOTS.pciDevices, log?: Logger): Promise<PciDevice[]> {
  let entries: string[]
  try {
    entries = await readdir(root)
  } catch (err) {
    throw new Error(`Failed to get list of PCI devices: ${(err as Error).message}`)
  }
  const out: PciDevice[] = []
  // Fixed-width hex addresses: a plain sort is address order.
  for (const bus of entries.sort()) {
    const dir = path.join(root, bus)
    if (!(await isDir(dir))) continue
    let ids: (string | null)[]
    try {
      ids = await Promise.all(['vendor', 'device', 'class'].map(async (f) => hexAfterX(await readFile(path.join(dir, f), 'utf8'))))
    } catch (err) {
      log?.warn('failed to read vendor id, product id or PCI class', {device: bus, err})
      continue
    }
    const [vendor, device, pciClass] = ids
    if (vendor == null || device == null || pciClass == null) {
      log?.warn('wrong format of vendor id, product id or PCI class', {device: bus})
      continue
    }
    let revision: string | null = null
    const revisionPath = path.join(dir, 'revision')
    if (await isFile(revisionPath)) {
      try {
        revision = hexAfterX(await readFile(revisionPath, 'utf8'))
        if (revision === null) log?.warn('wrong format of PCI revision', {device: bus})
      } catch (err) {
        log?.warn('failed to read PCI revision', {device: bus, err})
      }
    }
    let numaNode: string | null = null
    const numaPath = path.join(dir, 'numa_node')
    if (await isFile(numaPath)) {
      try {
        numaNode = (await readFile(numaPath, 'utf8')).trim()
      } catch (err) {
        log?.warn('failed to read PCI numa_node', {device: bus, err})
      }
    }
    out.push({vendor_id: vendor, product_id: device, class: pciClass, revision, bus, numa_node_id: numaNode})
  }
  return out
}

// -----------------------------------------------------------------------------------------------
// numa-topology

/** IPA's IncompatibleNumaFormatError: sysfs NUMA data not in the expected layout. */
export class IncompatibleNumaFormatError extends Error {
  override name = 'IncompatibleNumaFormatError'
}

export interface NumaTopology {
  ram: {numa_node: number; size_kb: number}[]
  cpus: {cpu: number; numa_node: number; thread_siblings: number[]}[]
  nics: {name: string; numa_node: number}[]
}

/** Strict integer parse (Python int(): surrounding blanks allowed, nothing else). */
function strictInt(text: string): number {
  const t = text.trim()
  if (!/^[-+]?\d+$/.test(t)) throw new Error(`invalid literal for int(): '${t}'`)
  return Number(t)
}

function nodeId(dir: string): number {
  try {
    return strictInt(path.basename(dir).slice(4))
  } catch (err) {
    throw new IncompatibleNumaFormatError(`Failed to get NUMA node id for ${dir}: ${(err as Error).message}`)
  }
}

/** Units of the node meminfo line, in kB (IPA converts with pint: kB/KB = 1, MB = 1024 KB, GB = 1048576 KB). */
const MEMINFO_UNITS: Readonly<Record<string, number>> = {'': 1, kB: 1, KB: 1, MB: 1024, GB: 1048576}

/** `Node 0 MemTotal:  16318888 kB` → 16318888. */
export function parseNodeMemTotal(meminfo: string, dir: string): number {
  const line = meminfo.split('\n').find((l) => l.includes('MemTotal'))
  if (line === undefined) throw new IncompatibleNumaFormatError(`Memory information is not available for ${dir}`)
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(line.split(':')[1] ?? '')
  const factor = m ? MEMINFO_UNITS[m[2]!] : undefined
  if (!m || factor === undefined) throw new IncompatibleNumaFormatError(`Failed to get memory information for ${dir}: cannot parse '${line.trim()}'`)
  return Math.trunc(Number(m[1]) * factor)
}

async function nodesMemory(dirs: string[]): Promise<NumaTopology['ram']> {
  const ram: NumaTopology['ram'] = []
  for (const dir of dirs) {
    const id = nodeId(dir)
    let meminfo: string
    try {
      meminfo = await readFile(path.join(dir, 'meminfo'), 'utf8')
    } catch (err) {
      throw new IncompatibleNumaFormatError(`Failed to get memory information for ${dir}: ${(err as Error).message}`)
    }
    ram.push({numa_node: id, size_kb: parseNodeMemTotal(meminfo, dir)})
  }
  return ram
}

/** One entry per (node, core_id); the threads sharing it are its thread_siblings. */
async function nodesCpus(dirs: string[]): Promise<NumaTopology['cpus']> {
  const cpus = new Map<string, NumaTopology['cpus'][number]>()
  for (const dir of dirs) {
    const id = nodeId(dir)
    let entries: string[]
    try {
      entries = await readdir(dir)
    } catch (err) {
      throw new IncompatibleNumaFormatError(`Failed to get list of threads for ${dir}: ${(err as Error).message}`)
    }
    for (const entry of naturalSort(entries)) {
      if (!entry.startsWith('cpu') || !(await isDir(path.join(dir, entry)))) continue
      let thread: number
      let core: number
      try {
        thread = strictInt(entry.slice(3))
      } catch (err) {
        throw new IncompatibleNumaFormatError(`Failed to get cores information for ${dir}: ${(err as Error).message}`)
      }
      try {
        core = strictInt(await readFile(path.join(dir, entry, 'topology', 'core_id'), 'utf8'))
      } catch (err) {
        throw new IncompatibleNumaFormatError(`Failed to gather cpu_id for thread ${entry} NUMA node ${dir}: ${(err as Error).message}`)
      }
      const key = `${id}/${core}`
      const known = cpus.get(key)
      if (!known) cpus.set(key, {cpu: core, numa_node: id, thread_siblings: [thread]})
      else if (!known.thread_siblings.includes(thread)) known.thread_siblings.push(thread)
    }
  }
  return [...cpus.values()]
}

/** NICs with a `device` link; one whose device has no readable numa_node breaks the whole topology (as in IPA). */
async function nodesNics(netRoot: string): Promise<NumaTopology['nics']> {
  if (!(await isDir(netRoot))) throw new IncompatibleNumaFormatError(`Failed to get list of NIC's, NIC device path does not exist: ${netRoot}`)
  const nics: NumaTopology['nics'] = []
  for (const name of naturalSort(await readdir(netRoot))) {
    if (!(await isDir(path.join(netRoot, name, 'device')))) continue
    try {
      nics.push({name, numa_node: strictInt(await readFile(path.join(netRoot, name, 'device', 'numa_node'), 'utf8'))})
    } catch (err) {
      throw new IncompatibleNumaFormatError(`Failed to gather NIC's for NUMA node ${name}: ${(err as Error).message}`)
    }
  }
  return nics
}

/**
 * IPA's collect_numa_topology_info. Returns null (and logs a warning, like IPA, which then adds
 * no `numa_topology` key) when there is no NUMA directory or its data does not fit.
 */
export async function collectNumaTopology(roots: Partial<CollectorRoots> = {}, log?: Logger): Promise<NumaTopology | null> {
  const nodeRoot = roots.numaNodes ?? DEFAULT_COLLECTOR_ROOTS.numaNodes
  const netRoot = roots.classNet ?? DEFAULT_COLLECTOR_ROOTS.classNet
  if (!(await isDir(nodeRoot))) {
    log?.warn('failed to get list of NUMA nodes, NUMA node path does not exist', {path: nodeRoot})
    return null
  }
  const dirs: string[] = []
  for (const entry of naturalSort(await readdir(nodeRoot))) {
    if (entry.startsWith('node') && (await isDir(path.join(nodeRoot, entry)))) dirs.push(path.join(nodeRoot, entry))
  }
  try {
    return {ram: await nodesMemory(dirs), cpus: await nodesCpus(dirs), nics: await nodesNics(netRoot)}
  } catch (err) {
    if (!(err instanceof IncompatibleNumaFormatError)) throw err
    log?.warn('failed to get some NUMA information', {err: err.message})
    return null
  }
}

// -----------------------------------------------------------------------------------------------
// dmi-decode

export type DmiSection = Record<string, string | string[] | number>

export interface DmiInfo {
  bios: DmiSection
  cpu: DmiSection[]
  /** The first Physical Memory Array (Number Of Devices summed over all arrays) plus `devices`. */
  memory: DmiSection & {devices?: DmiSection[]}
}

/** dmidecode output IPA's parser rejects with ValueError (a non-numeric device count): `dmi` becomes `{}`. */
export class DmiFormatError extends Error {
  override name = 'DmiFormatError'
}

const DMI_BIOS = 0
const DMI_PROCESSOR = 4
const DMI_MEMORY_ARRAY = 16
const DMI_MEMORY_DEVICE = 17

/**
 * One `Handle 0x...` block as IPA reads it: `Key: value` rows; a key with an empty value starts a
 * list filled by the following lines without a colon; the handle line itself is kept as `Handle`.
 */
function parseHandleBlock(block: string): DmiSection {
  const rows: DmiSection = {}
  let listKey: string | undefined
  for (const raw of block.split(/\r?\n/)) {
    const line = raw.trim()
    const colon = line.indexOf(':')
    if (colon >= 0) {
      const key = line.slice(0, colon).trim()
      const value = line.slice(colon + 1).trim()
      if (value) {
        rows[key] = value
        listKey = undefined
      } else {
        rows[key] = []
        listKey = key
      }
    } else if (line.includes('Handle 0x')) {
      rows.Handle = line
    } else if (listKey !== undefined) {
      ;(rows[listKey] as string[]).push(line)
    }
  }
  return rows
}

/**
 * IPA's dmi_inspector.parse_dmi over `dmidecode -t bios -t processor -t memory` output: the BIOS
 * block, every processor, and memory = the first memory array with `Number Of Devices` summed over
 * all arrays (an integer) and its `Handle` dropped, plus `devices` (the type 17 blocks) when any.
 * Throws when a memory array lacks `Number Of Devices` (IPA's KeyError).
 */
export function parseDmidecode(text: string, log?: Logger): DmiInfo {
  const info: DmiInfo = {bios: {}, cpu: [], memory: {devices: []}}
  const arrays: DmiSection[] = []
  const devices: DmiSection[] = []
  for (const block of text.split('\n\n')) {
    if (!block.startsWith('Handle 0x')) continue
    const m = /^\s*DMI type\s*(\d+)\s*$/.exec(block.split(',')[1] ?? '')
    if (!m) {
      log?.warn('failed to parse the handle type in dmidecode output', {line: block.split('\n')[0]})
      continue
    }
    const type = Number(m[1])
    if (type === DMI_BIOS) info.bios = parseHandleBlock(block)
    else if (type === DMI_PROCESSOR) info.cpu.push(parseHandleBlock(block))
    else if (type === DMI_MEMORY_ARRAY) arrays.push(parseHandleBlock(block))
    else if (type === DMI_MEMORY_DEVICE) devices.push(parseHandleBlock(block))
  }
  if (arrays.length) {
    let count = 0
    for (const a of arrays) {
      const n = a['Number Of Devices']
      if (n === undefined) throw new Error(`dmidecode memory array ${String(a.Handle)} has no 'Number Of Devices'`)
      try {
        count += strictInt(String(n))
      } catch (err) {
        throw new DmiFormatError(`dmidecode memory array ${String(a.Handle)}: ${(err as Error).message}`)
      }
    }
    const memory: DmiInfo['memory'] = {...arrays[0]!, 'Number Of Devices': count}
    delete memory.Handle
    info.memory = memory
  }
  if (devices.length) info.memory.devices = devices
  return info
}

/**
 * IPA's collect_dmidecode_info: run dmidecode (a failure fails the collector); output that does not
 * parse (a non-numeric device count) gives `{}` with a warning, as IPA does.
 */
export async function collectDmi(log?: Logger): Promise<DmiInfo | Record<string, never>> {
  const {stdout} = await run('dmidecode', ['-t', 'bios', '-t', 'processor', '-t', 'memory'])
  try {
    return parseDmidecode(stdout, log)
  } catch (err) {
    if (err instanceof DmiFormatError) {
      log?.warn('failed to collect dmidecode info', {err})
      return {}
    }
    throw err
  }
}
