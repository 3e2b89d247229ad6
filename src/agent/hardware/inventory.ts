/**
 * Inventory collectors with IPA's field semantics (`hardware.py`, `netutils.py`): CPU, memory,
 * network interfaces, BMC, system vendor, boot mode.
 *
 * Parsers are pure functions over tool output or file text; collectors are thin I/O around them.
 * Optional tools that are missing or fail never fail the inventory: the field falls back and a
 * warning is logged.
 */
import {existsSync} from 'node:fs'
import {readFile, readdir, readlink, realpath} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {run, ToolMissingError, which} from '../../common/exec.js'
import type {Logger} from '../log.js'
import {readTrimmed} from '../disk/sysfs.js'
import type {CPU, Memory, NetworkInterface, SystemVendor} from './types.js'

// ------------------------------------------------------------------------------------------------
// CPU

/** `lscpu` "Key: value" lines → lower-cased keys (first occurrence wins). */
export function parseLscpu(text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    const key = line.slice(0, colon).trim().toLowerCase()
    if (!out.has(key)) out.set(key, line.slice(colon + 1).trim())
  }
  return out
}

/** /proc/cpuinfo → one Map per processor block (lower-cased keys). */
export function parseCpuinfo(text: string): Map<string, string>[] {
  const blocks: Map<string, string>[] = []
  let cur = new Map<string, string>()
  for (const line of text.split('\n')) {
    if (!line.trim()) {
      if (cur.size) blocks.push(cur)
      cur = new Map()
      continue
    }
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    const key = line.slice(0, colon).trim().toLowerCase()
    if (!cur.has(key)) cur.set(key, line.slice(colon + 1).trim())
  }
  if (cur.size) blocks.push(cur)
  return blocks
}

const NODE_ARCH: Record<string, string> = {x64: 'x86_64', arm64: 'aarch64', ia32: 'i686', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64'}

/**
 * IPA's CPU record from lscpu (and /proc/cpuinfo as fallback): frequency prefers "CPU max MHz",
 * then "CPU MHz", then cpuinfo's "cpu MHz"; flags from lscpu's Flags or cpuinfo's flags/Features.
 */
export function cpuFromLscpu(lscpu: Map<string, string> | null, cpuinfo: Map<string, string>[], machine = os.machine()): CPU {
  const first = cpuinfo[0] ?? new Map<string, string>()
  const flagsText = lscpu?.get('flags') ?? first.get('flags') ?? first.get('features') ?? ''
  const physicalIds = new Set(cpuinfo.map((b) => b.get('physical id')).filter(Boolean))
  const sockets = Number.parseInt(lscpu?.get('socket(s)') ?? '', 10)
  const count = Number.parseInt(lscpu?.get('cpu(s)') ?? '', 10)
  return {
    model_name: lscpu?.get('model name') ?? first.get('model name') ?? first.get('cpu model') ?? '',
    frequency: lscpu?.get('cpu max mhz') ?? lscpu?.get('cpu mhz') ?? first.get('cpu mhz') ?? '',
    count: Number.isFinite(count) && count > 0 ? count : cpuinfo.filter((b) => b.has('processor')).length || os.cpus().length,
    architecture: lscpu?.get('architecture') ?? NODE_ARCH[machine] ?? machine,
    flags: flagsText.split(/\s+/).filter(Boolean),
    socket_count: Number.isFinite(sockets) && sockets > 0 ? sockets : physicalIds.size || 1,
  }
}

export async function collectCpu(log?: Logger): Promise<CPU> {
  const [lscpu, cpuinfo] = await Promise.all([
    run('lscpu', [], {env: {...process.env, LC_ALL: 'C'}}).then(
      (r) => parseLscpu(r.stdout),
      (err: unknown) => {
        log?.warn('lscpu failed: CPU facts come from /proc/cpuinfo', {err})
        return null
      },
    ),
    readFile('/proc/cpuinfo', 'utf8').then(parseCpuinfo, () => []),
  ])
  return cpuFromLscpu(lscpu, cpuinfo)
}

// ------------------------------------------------------------------------------------------------
// Memory

/** MemTotal from /proc/meminfo, in bytes (psutil's virtual_memory().total). */
export function parseMeminfoTotal(text: string): number | null {
  const m = /^MemTotal:\s+(\d+)\s*kB/im.exec(text)
  return m ? Number(m[1]) * 1024 : null
}

const SIZE_UNITS: Record<string, number> = {bytes: 1 / 1048576, kb: 1 / 1024, mb: 1, gb: 1024, tb: 1024 * 1024}

/**
 * Installed memory in MiB from `dmidecode -t memory`: the sum of every Memory Device's Size
 * ("No Module Installed" and unknown sizes count 0). null when no device reports a size.
 */
export function parseDmidecodeMemory(text: string): number | null {
  let total = 0
  let any = false
  for (const block of text.split(/\n\s*\n/)) {
    if (!/^Memory Device\s*$/m.test(block)) continue
    const m = /^\tSize:\s*(\d+)\s*(bytes|kB|MB|GB|TB)\s*$/im.exec(block)
    if (!m) continue
    total += Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!
    any = true
  }
  return any && total > 0 ? Math.round(total) : null
}

/** Physical memory from sysfs memory blocks: online blocks × block size (MiB). */
export async function sysfsMemoryMb(dir = '/sys/devices/system/memory'): Promise<number | null> {
  const blockHex = await readTrimmed(path.join(dir, 'block_size_bytes'))
  if (!blockHex) return null
  const blockSize = Number.parseInt(blockHex, 16)
  let names: string[]
  try {
    names = (await readdir(dir)).filter((n) => /^memory\d+$/.test(n))
  } catch {
    return null
  }
  const states = await Promise.all(names.map((n) => readTrimmed(path.join(dir, n, 'state'))))
  const online = states.filter((s) => s === 'online').length
  return online && blockSize ? Math.round((online * blockSize) / 1048576) : null
}

/** Last resort: MemTotal rounded up to a plausible installed size (the kernel keeps some for itself). */
export function roundUpMemoryMb(totalBytes: number): number {
  const mb = totalBytes / 1048576
  const step = 2 ** Math.max(0, Math.floor(Math.log2(Math.max(mb, 1))) - 3)
  return Math.ceil(mb / step) * step
}

export async function collectMemory(log?: Logger): Promise<Memory> {
  const [meminfo, dmi] = await Promise.all([
    readFile('/proc/meminfo', 'utf8').catch(() => ''),
    run('dmidecode', ['-t', 'memory'], {timeoutMs: 10_000}).then(
      (r) => parseDmidecodeMemory(r.stdout),
      (err: unknown) => {
        log?.debug('dmidecode -t memory failed', {err: (err as Error).message})
        return null
      },
    ),
  ])
  const total = parseMeminfoTotal(meminfo) ?? os.totalmem()
  let physical = dmi
  if (physical === null) physical = await sysfsMemoryMb()
  if (physical === null) {
    physical = roundUpMemoryMb(total)
    log?.warn('could not read installed memory (no SMBIOS, no memory blocks): estimated from MemTotal', {physical_mb: physical})
  }
  return {total, physical_mb: physical}
}

// ------------------------------------------------------------------------------------------------
// Network interfaces

export interface IpAddresses {
  ipv4: string | null
  ipv6: string | null
}

/**
 * `ip -j addr` → name → first IPv4 and first IPv6 address, in kernel order (netifaces order, which
 * IPA takes: the IPv6 one may be link-local). Zone suffixes are dropped.
 */
export function parseIpAddrJson(text: string): Map<string, IpAddresses> {
  const out = new Map<string, IpAddresses>()
  const data = JSON.parse(text || '[]') as {ifname?: string; addr_info?: {family?: string; local?: string}[]}[]
  for (const link of data) {
    if (!link.ifname) continue
    const cur = out.get(link.ifname) ?? {ipv4: null, ipv6: null}
    for (const a of link.addr_info ?? []) {
      if (!a.local) continue
      if (a.family === 'inet' && !cur.ipv4) cur.ipv4 = a.local
      if (a.family === 'inet6' && !cur.ipv6) cur.ipv6 = a.local.split('%')[0]!
    }
    out.set(link.ifname, cur)
  }
  return out
}

/** IPA's VLAN test: a name like eth0.100. */
export function isVlanName(name: string): boolean {
  const dot = name.indexOf('.')
  return dot > 0 && /^\d+$/.test(name.slice(dot + 1))
}

const PCI_ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i
const ARPHRD_INFINIBAND = 32

/** The nearest PCI function in a sysfs device path (virtio-net sits one level below its PCI device). */
export function pciAddressFromPath(devicePath: string): string | null {
  const parts = devicePath.split('/').reverse()
  return parts.find((p) => PCI_ADDRESS.test(p)) ?? null
}

/** InfiniBand: the MAC-like address derived from the port GUID, and the DHCP client-id (RFC 4390). */
export function infinibandAddresses(address: string): {mac: string; clientId: string} {
  const parts = address.toLowerCase().split(':')
  const guid = parts.slice(-8)
  return {mac: [...guid.slice(0, 3), ...guid.slice(-3)].join(':'), clientId: `ff:00:00:00:00:00:02:00:00:02:c9:00:${guid.join(':')}`}
}

export interface InterfaceOptions {
  sysNet?: string
  log?: Logger
  /** LLDP TLVs per interface (only when collect_lldp); absent interfaces get null. */
  lldp?: Map<string, [number, string][] | null>
}

/** Interface names IPA reports: those backed by a device (or VLANs); if none, every non-loopback one. */
export async function interfaceNames(sysNet = '/sys/class/net', log?: Logger): Promise<string[]> {
  const all = (await readdir(sysNet).catch(() => [] as string[])).filter((n) => n !== 'lo').sort()
  const real = all.filter((n) => isVlanName(n) || existsSync(path.join(sysNet, n, 'device')))
  if (real.length) return real
  if (all.length) log?.warn('no device-backed network interface: reporting virtual ones', {interfaces: all})
  return all
}

let biosdevnamePath: Promise<string | undefined> | undefined

async function biosdevname(name: string, log?: Logger): Promise<string | null> {
  if (isVlanName(name)) return null
  biosdevnamePath ??= which('biosdevname')
  if (!(await biosdevnamePath)) return null
  const r = await run('biosdevname', ['-i', name], {allowFailure: true, timeoutMs: 10_000}).catch(() => null)
  if (!r) return null
  if (r.exitCode === 4) {
    log?.debug('biosdevname: virtual machine, no BIOS NIC names')
    return null
  }
  if (r.exitCode !== 0) return null
  return r.stdout.trim() || null
}

/** One interface as IPA's get_interface_info reports it; null when it has no MAC address. */
export async function interfaceInfo(name: string, addrs: Map<string, IpAddresses>, opts: InterfaceOptions = {}): Promise<NetworkInterface | null> {
  const sysNet = opts.sysNet ?? '/sys/class/net'
  const dir = path.join(sysNet, name)
  const [address, type, carrier, vendor, product, speed, driverLink, deviceReal, bios] = await Promise.all([
    readTrimmed(path.join(dir, 'address')),
    readTrimmed(path.join(dir, 'type')),
    readTrimmed(path.join(dir, 'carrier')),
    readTrimmed(path.join(dir, 'device', 'vendor')),
    readTrimmed(path.join(dir, 'device', 'device')),
    readTrimmed(path.join(dir, 'speed')),
    readlink(path.join(dir, 'device', 'driver')).catch(() => null),
    realpath(path.join(dir, 'device')).catch(() => null),
    biosdevname(name, opts.log),
  ])
  if (!address) return null
  let mac: string | null = address.toLowerCase()
  let clientId: string | null = null
  if (Number(type) === ARPHRD_INFINIBAND) {
    const ib = infinibandAddresses(address)
    mac = ib.mac
    clientId = ib.clientId
  }
  const ip = addrs.get(name) ?? {ipv4: null, ipv6: null}
  const speedN = Number(speed)
  return {
    name,
    mac_address: mac,
    ipv4_address: ip.ipv4,
    ipv6_address: ip.ipv6,
    has_carrier: carrier === '1',
    lldp: opts.lldp ? (opts.lldp.get(name) ?? null) : null,
    vendor,
    product,
    client_id: clientId,
    biosdevname: bios,
    speed_mbps: Number.isFinite(speedN) && speedN > 0 ? speedN : null,
    pci_address: deviceReal ? pciAddressFromPath(deviceReal) : null,
    driver: driverLink ? path.basename(driverLink) : null,
  }
}

/** Addresses of every interface (`ip -j addr`); empty when ip is missing or fails. */
export async function interfaceAddresses(log?: Logger): Promise<Map<string, IpAddresses>> {
  try {
    const {stdout} = await run('ip', ['-j', 'addr', 'show'], {timeoutMs: 10_000})
    return parseIpAddrJson(stdout)
  } catch (err) {
    log?.warn('ip -j addr failed: interface addresses are not reported', {err: (err as Error).message})
    return new Map()
  }
}

// ------------------------------------------------------------------------------------------------
// BMC (ipmitool)

export const IPMI_DEVICES = ['/dev/ipmi0', '/dev/ipmi/0', '/dev/ipmidev/0']

/** Is there an IPMI device to talk to? (Without one ipmitool only times out, 33 times over.) */
export function anyIpmiDeviceExists(): boolean {
  return IPMI_DEVICES.some((d) => existsSync(d))
}

/** "IP Address" and "MAC Address" from `ipmitool lan print <channel>`. */
export function parseIpmiLanPrint(text: string): {ip: string | null; mac: string | null} {
  const field = (label: string): string | null => {
    const m = new RegExp(`^${label}\\s*:\\s*(\\S+)`, 'm').exec(text)
    return m ? m[1]! : null
  }
  return {ip: field('IP Address'), mac: field('MAC Address')}
}

/** "IPv6/IPv4 Addressing Enables" of `ipmitool lan6 print <ch> enables` (ipv4, ipv6, both). */
export function parseIpmiLan6Enables(text: string): string | null {
  const m = /IPv6\/IPv4 Addressing Enables\s*:\s*(\S+)/.exec(text)
  return m ? m[1]!.trim() : null
}

/**
 * First usable address in `ipmitool lan6 print <ch> dynamic_addr|static_addr` output: active, enabled
 * (static) or obtained by DHCPv6/SLAAC (dynamic), not the null address.
 */
export function parseIpmiLan6Addresses(text: string, dynamic: boolean): string | null {
  const sections: Record<string, string>[] = []
  let cur: Record<string, string> | null = null
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    if (!/^\s/.test(line)) {
      cur = {}
      sections.push(cur)
      continue
    }
    const colon = line.indexOf(':')
    if (colon > 0 && cur) cur[line.slice(0, colon).trim()] = line.slice(colon + 1).trim()
  }
  for (const s of sections) {
    const address = s.Address
    if (!address || /^::(\/\d{1,3})*$/.test(address)) continue
    const enabled = dynamic ? ['DHCPv6', 'SLAAC'].includes(s['Source/Type'] ?? '') : /^(yes|true|enabled)$/i.test(s.Enabled ?? '')
    if (s.Status === 'active' && enabled) return address.split('/')[0]!
  }
  return null
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

export interface BmcInfo {
  address: string | null
  v6address: string | null
  mac: string | null
}

async function ipmitool(args: string[]): Promise<{stdout: string; stderr: string; exitCode: number}> {
  return run('ipmitool', args, {allowFailure: true, timeoutMs: 30_000})
}

/**
 * IPA's BMC detection over LAN channels 1–11: the first non-0.0.0.0 IPv4 address ("0.0.0.0" when
 * none), the first usable IPv6 address ("::/0" when none), the first MAC of a channel with an address
 * (null when none). All null when there is no IPMI device or ipmitool is missing.
 */
export async function detectBmc(log?: Logger): Promise<BmcInfo> {
  if (!anyIpmiDeviceExists()) return {address: null, v6address: null, mac: null}
  try {
    let address: string | null = null
    let mac: string | null = null
    for (let ch = 1; ch <= 11 && (address === null || mac === null); ch++) {
      const r = await ipmitool(['lan', 'print', String(ch)])
      if (r.stderr.startsWith('Invalid channel') || r.exitCode !== 0) continue
      const {ip, mac: m} = parseIpmiLanPrint(r.stdout)
      if (!ip || !IPV4.test(ip) || ip === '0.0.0.0') continue
      address ??= ip
      if (mac === null && m && MAC.test(m) && m !== '00:00:00:00:00:00') mac = m.toLowerCase()
    }
    let v6address: string | null = null
    for (let ch = 1; ch <= 11 && v6address === null; ch++) {
      const r = await ipmitool(['lan6', 'print', String(ch), 'enables'])
      if (r.exitCode !== 0 || !['ipv6', 'both'].includes(parseIpmiLan6Enables(r.stdout) ?? '')) continue
      for (const dynamic of [true, false]) {
        const a = await ipmitool(['lan6', 'print', String(ch), dynamic ? 'dynamic_addr' : 'static_addr'])
        if (a.exitCode !== 0) continue
        v6address = parseIpmiLan6Addresses(a.stdout, dynamic)
        if (v6address) break
      }
    }
    return {address: address ?? '0.0.0.0', v6address: v6address ?? '::/0', mac}
  } catch (err) {
    if (err instanceof ToolMissingError) log?.warn('ipmitool is not installed: BMC address not reported', {package: err.debianPackage})
    else log?.warn('cannot get BMC address', {err})
    return {address: null, v6address: null, mac: null}
  }
}

// ------------------------------------------------------------------------------------------------
// System vendor, boot

/** SMBIOS facts from /sys/class/dmi/id (empty strings when absent, e.g. in a microVM). */
export async function collectSystemVendor(dir = '/sys/class/dmi/id'): Promise<SystemVendor> {
  const f = async (n: string): Promise<string> => (await readTrimmed(path.join(dir, n))) ?? ''
  const [product_name, serial_number, manufacturer, vendor, version, build_date] = await Promise.all(
    ['product_name', 'product_serial', 'sys_vendor', 'bios_vendor', 'bios_version', 'bios_date'].map(f),
  )
  return {
    product_name: product_name!,
    serial_number: serial_number!,
    manufacturer: manufacturer!,
    firmware: {vendor: vendor!, version: version!, build_date: build_date!},
  }
}
