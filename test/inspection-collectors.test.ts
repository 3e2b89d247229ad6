/**
 * IPA's extra inspection collectors (pci-devices, numa-topology, dmi-decode, lldp): fixture sysfs
 * trees and a captured-format dmidecode text parsed to IPA's structures, the same collectors on
 * this machine's real /sys (read-only), and the keys arriving through collectInspectionData.
 */
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig, resolveConfig, type AgentConfig} from '../src/agent/config.js'
import {collectNumaTopology, collectPciDevices, DmiFormatError, parseDmidecode, parseNodeMemTotal} from '../src/agent/hardware/collectors.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {ManagerRegistry} from '../src/agent/hardware/manager.js'
import {collectInspectionData} from '../src/agent/inspector.js'
import type {Logger} from '../src/agent/log.js'
import type {AgentRuntime} from '../src/agent/runtime.js'
import {CommandFailedError} from '../src/common/exec.js'

const warnings: string[] = []
const quiet: Logger = {debug() {}, info() {}, warn: (msg: string) => void warnings.push(msg), error() {}, child: () => quiet}

function manager(overrides: Partial<AgentConfig> = {}): GenericHardwareManager {
  const m = new GenericHardwareManager()
  m.skipBmcDetect = true
  m.attach({config: {...defaultConfig(), ...overrides}, log: quiet})
  return m
}

/** Write `files` (relative path → content) under `root`. */
function writeTree(root: string, files: Record<string, string>): void {
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, rel)), {recursive: true})
    writeFileSync(path.join(root, rel), content)
  }
}

let tmp: string
let roots: {pciDevices: string; numaNodes: string; classNet: string}

/**
 * A two-node machine: node0 with cores 0 and 1 (threads 0,2 and 1,3), node1 with core 0 (threads
 * 4,5); three PCI devices (one without revision, one with a broken vendor file) plus a stray file;
 * eth0 on node 0, eth1 on node 1, a bridge without a device (skipped), lo.
 */
function buildFixture(root: string): void {
  const pci = path.join(root, 'bus/pci/devices')
  writeTree(pci, {
    '0000:00:1f.2/vendor': '0x8086\n',
    '0000:00:1f.2/device': '0x2922\n',
    '0000:00:1f.2/class': '0x010601\n',
    '0000:00:1f.2/revision': '0x02\n',
    '0000:00:1f.2/numa_node': '-1\n',
    '0000:00:02.0/vendor': '0x1af4\n',
    '0000:00:02.0/device': '0x1041\n',
    '0000:00:02.0/class': '0x020000\n',
    '0000:00:02.0/numa_node': '0\n',
    '0000:81:00.0/vendor': '0x15b3\n',
    '0000:81:00.0/device': '0x1017\n',
    '0000:81:00.0/class': '0x020000\n',
    '0000:81:00.0/revision': '0x00\n',
    '0000:81:00.0/numa_node': '1\n',
    '0000:82:00.0/vendor': 'garbage\n',
    '0000:82:00.0/device': '0x1234\n',
    '0000:82:00.0/class': '0x030000\n',
    '0000:83:00.0/vendor': '0x10de\n',
  })
  writeFileSync(path.join(pci, 'not-a-device'), '')
  const node = path.join(root, 'devices/system/node')
  const cpu = (n: number, id: number, core: number): Record<string, string> => ({[`node${n}/cpu${id}/topology/core_id`]: `${core}\n`})
  writeTree(node, {
    'node0/meminfo': 'Node 0 MemTotal:       16318888 kB\nNode 0 MemFree:        12000000 kB\n',
    'node0/cpulist': '0-3\n',
    'node1/meminfo': 'Node 1 MemTotal:       8159444 kB\n',
    'node1/cpulist': '4-5\n',
    possible: '0-1\n',
    ...cpu(0, 0, 0),
    ...cpu(0, 2, 0),
    ...cpu(0, 1, 1),
    ...cpu(0, 3, 1),
    ...cpu(1, 4, 0),
    ...cpu(1, 5, 0),
  })
  mkdirSync(path.join(node, 'power'))
  const net = path.join(root, 'class/net')
  writeTree(root, {
    'devices/pci0000:00/0000:00:02.0/numa_node': '0\n',
    'devices/pci0000:80/0000:81:00.0/numa_node': '1\n',
  })
  mkdirSync(path.join(net, 'eth0'), {recursive: true})
  mkdirSync(path.join(net, 'eth1'))
  mkdirSync(path.join(net, 'br0'))
  mkdirSync(path.join(net, 'lo'))
  symlinkSync(path.join(root, 'devices/pci0000:00/0000:00:02.0'), path.join(net, 'eth0/device'))
  symlinkSync(path.join(root, 'devices/pci0000:80/0000:81:00.0'), path.join(net, 'eth1/device'))
  roots = {pciDevices: pci, numaNodes: node, classNet: net}
}

beforeAll(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'rdk-collectors-'))
  buildFixture(tmp)
})
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

describe('pci-devices', () => {
  it('lists every readable device with ids without 0x, sorted by address; broken ones are skipped', async () => {
    warnings.length = 0
    expect(await collectPciDevices(roots.pciDevices, quiet)).toEqual([
      {vendor_id: '1af4', product_id: '1041', class: '020000', revision: null, bus: '0000:00:02.0', numa_node_id: '0'},
      {vendor_id: '8086', product_id: '2922', class: '010601', revision: '02', bus: '0000:00:1f.2', numa_node_id: '-1'},
      {vendor_id: '15b3', product_id: '1017', class: '020000', revision: '00', bus: '0000:81:00.0', numa_node_id: '1'},
    ])
    expect(warnings).toHaveLength(2) // 0000:82:00.0 (no 0x), 0000:83:00.0 (files missing)
  })

  it('an unreadable root fails the collector with a specific error', async () => {
    await expect(collectPciDevices(path.join(tmp, 'nope'))).rejects.toThrow(/Failed to get list of PCI devices: ENOENT/)
  })
})

describe('numa-topology', () => {
  it('ram per node in kB, cpus by (node, core_id) with their thread siblings, device-backed NICs', async () => {
    expect(await collectNumaTopology(roots, quiet)).toEqual({
      ram: [
        {numa_node: 0, size_kb: 16318888},
        {numa_node: 1, size_kb: 8159444},
      ],
      cpus: [
        {cpu: 0, numa_node: 0, thread_siblings: [0, 2]},
        {cpu: 1, numa_node: 0, thread_siblings: [1, 3]},
        {cpu: 0, numa_node: 1, thread_siblings: [4, 5]},
      ],
      nics: [
        {name: 'eth0', numa_node: 0},
        {name: 'eth1', numa_node: 1},
      ],
    })
  })

  it('meminfo units like IPA (kB, MB = 1024 kB, GB); a missing MemTotal is an incompatible format', () => {
    expect(parseNodeMemTotal('Node 0 MemTotal: 2 MB\n', 'node0')).toBe(2048)
    expect(parseNodeMemTotal('Node 0 MemTotal: 1 GB\n', 'node0')).toBe(1048576)
    expect(() => parseNodeMemTotal('Node 0 MemFree: 1 kB\n', 'node0')).toThrow(/Memory information is not available for node0/)
    expect(() => parseNodeMemTotal('Node 0 MemTotal: 1 TB\n', 'node0')).toThrow(/Failed to get memory information/)
  })

  it('no NUMA directory, or a NIC device without numa_node: no topology and a warning (as IPA)', async () => {
    warnings.length = 0
    expect(await collectNumaTopology({...roots, numaNodes: path.join(tmp, 'none')}, quiet)).toBeNull()
    expect(warnings).toEqual(['failed to get list of NUMA nodes, NUMA node path does not exist'])
    const net2 = path.join(tmp, 'net2')
    mkdirSync(path.join(net2, 'eth9/device'), {recursive: true}) // e.g. a virtio NIC: its device has no numa_node
    warnings.length = 0
    expect(await collectNumaTopology({...roots, classNet: net2}, quiet)).toBeNull()
    expect(warnings).toEqual(['failed to get some NUMA information'])
  })
})

describe('dmi-decode', () => {
  const text = readFileSync(new URL('./fixtures/collectors/dmidecode-2cpu.txt', import.meta.url), 'utf8')

  it("parses dmidecode -t bios -t processor -t memory into IPA's bios / cpu / memory.devices", () => {
    const dmi = parseDmidecode(text)
    expect(dmi.bios).toEqual({
      Handle: 'Handle 0x0000, DMI type 0, 26 bytes',
      Vendor: 'SeaBIOS',
      Version: '1.16.2-debian-1.16.2-1',
      'Release Date': '04/01/2014',
      Address: '0xE8000',
      'Runtime Size': '96 kB',
      'ROM Size': '64 kB',
      Characteristics: ['BIOS characteristics not supported', 'Targeted content distribution is supported'],
      'BIOS Revision': '0.0',
    })
    expect(dmi.cpu.map((c) => [c['Socket Designation'], c['Core Count'], c.Handle])).toEqual([
      ['CPU 0', '2', 'Handle 0x0400, DMI type 4, 48 bytes'],
      ['CPU 1', '2', 'Handle 0x0401, DMI type 4, 48 bytes'],
    ])
    const {devices, ...array} = dmi.memory
    // The first array, its device count summed over both arrays, without its Handle.
    expect(array).toEqual({
      Location: 'Other',
      Use: 'System Memory',
      'Error Correction Type': 'Multi-bit ECC',
      'Maximum Capacity': '8 GB',
      'Error Information Handle': 'Not Provided',
      'Number Of Devices': 3,
    })
    expect(devices!.map((d) => [d.Locator, d.Size, d['Array Handle']])).toEqual([
      ['DIMM 0', '4 GB', '0x1000'],
      ['DIMM 1', '4 GB', '0x1000'],
      ['DIMM 2', '4 GB', '0x1001'],
    ])
    expect(JSON.stringify(dmi)).not.toContain('Language') // type 13 is not collected
  })

  it('no tables: empty bios, no cpu, memory with empty devices; an array without a device count fails', () => {
    expect(parseDmidecode('# dmidecode 3.4\nScanning /dev/mem for entry point.\n')).toEqual({bios: {}, cpu: [], memory: {devices: []}})
    expect(() => parseDmidecode('Handle 0x1000, DMI type 16, 23 bytes\nPhysical Memory Array\n\tUse: System Memory\n')).toThrow(/has no 'Number Of Devices'/)
    expect(() => parseDmidecode('Handle 0x1000, DMI type 16, 23 bytes\nPhysical Memory Array\n\tNumber Of Devices: many\n')).toThrow(DmiFormatError)
  })
})

describe('on this machine (real /sys, read-only)', () => {
  it("pci-devices and numa-topology have IPA's shapes", async () => {
    const m = manager()
    const {pci_devices} = (await m.collect_pci_devices()) as {pci_devices: Record<string, unknown>[]}
    expect(pci_devices.map((d) => d.bus)).toEqual(readdirSync('/sys/bus/pci/devices').sort())
    for (const d of pci_devices) {
      expect(d.vendor_id).toMatch(/^[0-9a-f]{4}$/)
      expect(d.product_id).toMatch(/^[0-9a-f]{4}$/)
      expect(d.class).toMatch(/^[0-9a-f]{6}$/)
      expect(d.revision).toMatch(/^[0-9a-f]{2}$/)
    }
    const numa = (await m.collect_numa_topology()) as {numa_topology?: {ram: {size_kb: number}[]; cpus: {thread_siblings: number[]}[]}}
    // IPA drops the whole topology when a NIC's device has no numa_node (virtio NICs).
    const nicWithoutNode = readdirSync('/sys/class/net').some(
      (n) => existsSync(`/sys/class/net/${n}/device`) && !existsSync(`/sys/class/net/${n}/device/numa_node`),
    )
    if (nicWithoutNode || !existsSync('/sys/devices/system/node')) {
      expect(numa).toEqual({})
    } else {
      expect(numa.numa_topology!.ram.length).toBeGreaterThan(0)
      expect(numa.numa_topology!.cpus.flatMap((c) => c.thread_siblings)).toHaveLength(os.cpus().length)
    }
  })

  it("dmi-decode: IPA's structure where the firmware has SMBIOS tables, a dmidecode failure otherwise", async () => {
    const m = manager()
    if (existsSync('/sys/firmware/dmi/tables/DMI')) {
      const {dmi} = (await m.collect_dmi_decode()) as {dmi: {bios: Record<string, unknown>; cpu: unknown[]; memory: {devices?: unknown[]}}}
      expect(dmi.bios.Vendor).toEqual(expect.any(String))
      expect(dmi.cpu.length).toBeGreaterThan(0)
    } else {
      await expect(m.collect_dmi_decode()).rejects.toThrow(CommandFailedError)
    }
  })

  it('lldp: lldp_raw for every interface but lo ([] when no frame arrives within the timeout)', async () => {
    const m = manager({lldpTimeout: 1})
    const start = Date.now()
    const {lldp_raw} = (await m.collect_lldp()) as {lldp_raw: Record<string, unknown>}
    expect(Date.now() - start).toBeLessThan(10_000)
    expect(Object.keys(lldp_raw)).not.toContain('lo')
    expect(Object.keys(lldp_raw).length).toBeGreaterThan(0)
    for (const tlvs of Object.values(lldp_raw)) if (tlvs !== null) expect(Array.isArray(tlvs)).toBe(true)
  })
})

describe('through collectInspectionData', () => {
  it('ipa-inspection-collectors=default,pci-devices,numa-topology adds pci_devices and numa_topology', async () => {
    const config = resolveConfig({cmdline: 'ipa-inspection-collectors=default,pci-devices,numa-topology', flags: {'disk-wait-attempts': 0}})
    expect(config.inspectionCollectors).toEqual(['default', 'pci-devices', 'numa-topology'])
    const m = new GenericHardwareManager()
    m.skipBmcDetect = true
    m.collectorRoots = roots
    const registry = new ManagerRegistry()
    await registry.load([m], {config, log: quiet})
    const rt = {config, registry, log: quiet} as unknown as AgentRuntime
    const data = await collectInspectionData(rt)
    expect(data.error).toBeNull()
    expect(data.inventory).toBeDefined()
    expect((data.pci_devices as {bus: string}[]).map((d) => d.bus)).toEqual(['0000:00:02.0', '0000:00:1f.2', '0000:81:00.0'])
    expect(data.numa_topology).toMatchObject({ram: [{numa_node: 0}, {numa_node: 1}], nics: [{name: 'eth0'}, {name: 'eth1'}]})
    expect((data.configuration as {collectors: string[]}).collectors).toEqual(['default', 'pci-devices', 'numa-topology'])
  })

  it('dmi-decode and lldp: dmi (or the dmidecode failure in `error`) and lldp_raw arrive', async () => {
    const config = resolveConfig({cmdline: 'ipa-inspection-collectors=dmi-decode,lldp ipa-lldp-timeout=1', flags: {'disk-wait-attempts': 0}})
    const m = new GenericHardwareManager()
    m.skipBmcDetect = true
    const registry = new ManagerRegistry()
    await registry.load([m], {config, log: quiet})
    const data = await collectInspectionData({config, registry, log: quiet} as unknown as AgentRuntime)
    expect(Object.keys(data.lldp_raw as object)).not.toContain('lo')
    if (existsSync('/sys/firmware/dmi/tables/DMI')) {
      expect(data.dmi).toMatchObject({bios: expect.any(Object), cpu: expect.any(Array), memory: expect.any(Object)})
      expect(data.error).toBeNull()
    } else {
      expect(data.dmi).toBeUndefined()
      expect(data.error).toMatch(/^collector dmi-decode failed: .*dmidecode/)
    }
  })
})
