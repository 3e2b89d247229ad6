/**
 * Inventory: parsers over captured/realistic tool output, the real inventory of this machine
 * (shape, types, time), and the step lists Ironic receives.
 */
import {mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {performance} from 'node:perf_hooks'
import {describe, expect, it} from 'vitest'
import {defaultConfig, type AgentConfig} from '../src/agent/config.js'
import {DeviceNotFound, NotImplementedYet} from '../src/agent/errors.js'
import {clearDirectory, pstoreMountPoint} from '../src/agent/hardware/erase.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {
  cpuFromLscpu,
  infinibandAddresses,
  interfaceInfo,
  interfaceNames,
  isVlanName,
  parseCpuinfo,
  parseDmidecodeMemory,
  parseIpAddrJson,
  parseIpmiLan6Addresses,
  parseIpmiLan6Enables,
  parseIpmiLanPrint,
  parseLscpu,
  parseMeminfoTotal,
  pciAddressFromPath,
  roundUpMemoryMb,
} from '../src/agent/hardware/inventory.js'
import {HardwareManager, ManagerRegistry} from '../src/agent/hardware/manager.js'
import {HardwareSupport} from '../src/agent/hardware/types.js'
import type {Logger} from '../src/agent/log.js'

const fixture = (name: string): string => readFileSync(new URL(`./fixtures/hardware/${name}`, import.meta.url), 'utf8')

const quiet: Logger = {debug() {}, info() {}, warn() {}, error() {}, child: () => quiet}

function manager(overrides: Partial<AgentConfig> = {}): GenericHardwareManager {
  const m = new GenericHardwareManager()
  m.attach({config: {...defaultConfig(), ...overrides}, log: quiet})
  return m
}

describe('CPU', () => {
  it('lscpu captured here (KVM guest without "CPU MHz"): frequency falls back to /proc/cpuinfo', () => {
    const cpu = cpuFromLscpu(parseLscpu(fixture('lscpu-kvm-epyc.txt')), parseCpuinfo(fixture('cpuinfo-kvm-epyc.txt')))
    expect(cpu).toMatchObject({model_name: 'AMD EPYC', frequency: '2596.124', count: 2, architecture: 'x86_64', socket_count: 1})
    expect(cpu.flags).toContain('avx2')
    expect(cpu.flags[0]).toBe('fpu')
  })

  it('prefers "CPU max MHz" over "CPU MHz"; flags from /proc/cpuinfo when lscpu has none', () => {
    const lscpu = parseLscpu(
      'Architecture: x86_64\nCPU(s): 64\nModel name: Intel(R) Xeon(R) Gold 6338\nSocket(s): 2\nCPU MHz: 800.000\nCPU max MHz: 3200.0000\n',
    )
    const cpu = cpuFromLscpu(lscpu, parseCpuinfo('processor\t: 0\nflags\t\t: fpu vme sse\n\nprocessor\t: 1\nflags\t\t: fpu vme sse\n'))
    expect(cpu).toEqual({
      model_name: 'Intel(R) Xeon(R) Gold 6338',
      frequency: '3200.0000',
      count: 64,
      architecture: 'x86_64',
      flags: ['fpu', 'vme', 'sse'],
      socket_count: 2,
    })
  })

  it('works from /proc/cpuinfo alone (lscpu failed)', () => {
    const cpu = cpuFromLscpu(null, parseCpuinfo(fixture('cpuinfo-kvm-epyc.txt')), 'x64')
    expect(cpu).toMatchObject({model_name: 'AMD EPYC', count: 2, architecture: 'x86_64', socket_count: 1})
  })
})

describe('memory', () => {
  it('sums dmidecode Memory Device sizes in MiB (GB and MB units, empty slots ignored)', () => {
    expect(parseDmidecodeMemory(fixture('dmidecode-memory.txt'))).toBe(32 * 1024 + 16384)
    expect(parseDmidecodeMemory('# dmidecode 3.4\nScanning /dev/mem for entry point.\n')).toBeNull()
  })

  it('MemTotal in bytes; the last-resort estimate rounds up to a plausible size', () => {
    expect(parseMeminfoTotal('MemTotal:       24684092 kB\nMemFree: 1 kB\n')).toBe(24684092 * 1024)
    expect(roundUpMemoryMb(24684092 * 1024)).toBe(24576)
    expect(roundUpMemoryMb(2003 * 1048576)).toBe(2048)
  })
})

describe('network', () => {
  it('ip -j addr captured here: first IPv4 and first IPv6 (kernel order, as IPA)', () => {
    const a = parseIpAddrJson(fixture('ip-addr.json'))
    expect(a.get('eth0')).toEqual({ipv4: '192.0.2.2', ipv6: 'fd00::2'})
    expect(a.get('ifb0')).toEqual({ipv4: null, ipv6: null})
  })

  it('VLAN names, PCI address of a virtio NIC, InfiniBand MAC and client-id', () => {
    expect(isVlanName('eth0.100')).toBe(true)
    expect(isVlanName('eth0')).toBe(false)
    expect(pciAddressFromPath('/sys/devices/pci0000:00/0000:00:03.0/virtio2')).toBe('0000:00:03.0')
    expect(pciAddressFromPath('/sys/devices/virtual/net/ifb0')).toBeNull()
    const ib = infinibandAddresses('80:00:02:08:fe:80:00:00:00:00:00:00:7c:fe:90:03:00:b6:b5:c1')
    expect(ib.mac).toBe('7c:fe:90:b6:b5:c1')
    expect(ib.clientId).toBe('ff:00:00:00:00:00:02:00:00:02:c9:00:7c:fe:90:03:00:b6:b5:c1')
  })
})

describe('interfaces from sysfs (a fake /sys/class/net tree)', () => {
  it('reports device-backed interfaces and VLANs with IPA fields; virtual ones only when nothing else exists', async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'rdk-sysnet-'))
    try {
      const pci = path.join(root, 'devices/pci0000:00/0000:3b:00.1')
      mkdirSync(path.join(pci, 'driver-dir/ice'), {recursive: true})
      writeFileSync(path.join(pci, 'vendor'), '0x8086\n')
      writeFileSync(path.join(pci, 'device'), '0x159b\n')
      symlinkSync(path.join(pci, 'driver-dir/ice'), path.join(pci, 'driver'))
      const net = path.join(root, 'class/net')
      const iface = (name: string, files: Record<string, string>, device?: string): void => {
        mkdirSync(path.join(net, name), {recursive: true})
        for (const [f, v] of Object.entries(files)) writeFileSync(path.join(net, name, f), `${v}\n`)
        if (device) symlinkSync(device, path.join(net, name, 'device'))
      }
      iface('lo', {address: '00:00:00:00:00:00', type: '772'})
      iface('br0', {address: '52:54:00:00:00:09', type: '1'})
      iface('ens1f1', {address: 'B4:96:91:AA:BB:01', type: '1', carrier: '1', speed: '25000'}, pci)
      iface('ens1f1.100', {address: 'b4:96:91:aa:bb:01', type: '1', carrier: '0', speed: '-1'})
      expect(await interfaceNames(net)).toEqual(['ens1f1', 'ens1f1.100'])
      const addrs = new Map([['ens1f1', {ipv4: '10.0.0.5', ipv6: 'fe80::b696:91ff:feaa:bb01'}]])
      const lldp = new Map<string, [number, string][] | null>([['ens1f1', [[1, '04b49691aabb01']]]])
      expect(await interfaceInfo('ens1f1', addrs, {sysNet: net, lldp})).toEqual({
        name: 'ens1f1',
        mac_address: 'b4:96:91:aa:bb:01',
        ipv4_address: '10.0.0.5',
        ipv6_address: 'fe80::b696:91ff:feaa:bb01',
        has_carrier: true,
        lldp: [[1, '04b49691aabb01']],
        vendor: '0x8086',
        product: '0x159b',
        client_id: null,
        biosdevname: null,
        speed_mbps: 25000,
        pci_address: '0000:3b:00.1',
        driver: 'ice',
      })
      expect(await interfaceInfo('ens1f1.100', addrs, {sysNet: net, lldp})).toMatchObject({
        has_carrier: false,
        lldp: null,
        vendor: null,
        speed_mbps: null,
        pci_address: null,
        driver: null,
      })
      // only virtual interfaces: report them rather than nothing
      rmSync(path.join(net, 'ens1f1'), {recursive: true})
      rmSync(path.join(net, 'ens1f1.100'), {recursive: true})
      expect(await interfaceNames(net)).toEqual(['br0'])
    } finally {
      rmSync(root, {recursive: true, force: true})
    }
  })
})

describe('BMC output parsing', () => {
  it('ipmitool lan print: IP and MAC', () => {
    expect(parseIpmiLanPrint(fixture('ipmitool-lan-print.txt'))).toEqual({ip: '192.168.1.42', mac: '38:68:dd:0a:1b:2c'})
  })

  it('ipmitool lan6: enables, dynamic and static addresses', () => {
    expect(parseIpmiLan6Enables('IPv6/IPv4 Support       : IPv6 only: no, IPv4 and IPv6: yes\nIPv6/IPv4 Addressing Enables  : both\n')).toBe('both')
    expect(parseIpmiLan6Addresses(fixture('ipmitool-lan6-dynamic.txt'), true)).toBe('fd00:10::42')
    expect(parseIpmiLan6Addresses(fixture('ipmitool-lan6-static.txt'), false)).toBe('2001:db8::5')
    expect(parseIpmiLan6Addresses(fixture('ipmitool-lan6-static.txt').replace('yes', 'no'), false)).toBeNull()
  })
})

describe('list_hardware_info on this machine', () => {
  it('returns a well-formed inventory quickly', async () => {
    const m = manager()
    await m.list_hardware_info() // warm-up (module loading, page cache)
    const t0 = performance.now()
    const inv = await m.list_hardware_info()
    const ms = performance.now() - t0
    console.log(`inventory collected in ${ms.toFixed(0)} ms`)
    expect(ms).toBeLessThan(2000)

    expect(Object.keys(inv)).toEqual(
      expect.arrayContaining(['interfaces', 'cpu', 'disks', 'memory', 'bmc_address', 'bmc_v6address', 'system_vendor', 'boot', 'hostname']),
    )
    expect(inv.cpu.count).toBeGreaterThan(0)
    expect(typeof inv.cpu.model_name).toBe('string')
    expect(typeof inv.cpu.frequency).toBe('string')
    expect(typeof inv.cpu.architecture).toBe('string')
    expect(Array.isArray(inv.cpu.flags)).toBe(true)
    expect(inv.cpu.socket_count).toBeGreaterThan(0)
    expect(inv.memory.total).toBeGreaterThan(0)
    expect(inv.memory.physical_mb).toBeGreaterThanOrEqual(Math.floor(inv.memory.total / 1048576))

    expect(inv.disks.length).toBeGreaterThan(0)
    for (const d of inv.disks) {
      expect(Object.keys(d).sort()).toEqual(
        [
          'by_path',
          'hctl',
          'logical_sectors',
          'model',
          'name',
          'physical_sectors',
          'rotational',
          'serial',
          'size',
          'tran',
          'vendor',
          'wwn',
          'wwn_vendor_extension',
          'wwn_with_extension',
        ].sort(),
      )
      expect(d.name).toMatch(/^\/dev\//)
      expect(d.name).not.toMatch(/^\/dev\/(loop|ram|zram)/)
      expect(d.size).toBeGreaterThan(0)
      expect(typeof d.rotational).toBe('boolean')
      expect(typeof d.model).toBe('string')
    }

    expect(inv.interfaces.length).toBeGreaterThan(0)
    for (const i of inv.interfaces) {
      expect(i.name).not.toBe('lo')
      expect(i.mac_address).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/)
      expect(typeof i.has_carrier).toBe('boolean')
      expect(i.lldp).toBeNull()
      expect(i.client_id).toBeNull()
      expect(i.ipv4_address === null || /^\d+\.\d+\.\d+\.\d+$/.test(i.ipv4_address)).toBe(true)
    }

    expect(typeof inv.system_vendor.product_name).toBe('string')
    expect(typeof inv.system_vendor.firmware.build_date).toBe('string')
    expect(['uefi', 'bios']).toContain(inv.boot.current_boot_mode)
    expect(inv.boot.pxe_interface).toBeNull()
    expect(inv.hostname).toBeTruthy()
    // no IPMI device here: no ipmitool calls, null BMC fields
    expect(inv.bmc_address).toBeNull()
    expect(inv.bmc_v6address).toBeNull()
    expect(JSON.parse(JSON.stringify(inv))).toEqual(inv)
  })

  it('reports BOOTIF as given and skips BMC detection when told to', async () => {
    const m = manager({bootif: '01-52-54-00-aa-bb-03'})
    m.skipBmcDetect = true
    expect(await m.get_boot_info()).toMatchObject({pxe_interface: '01-52-54-00-aa-bb-03'})
    expect(await m.get_bmc_address()).toBeNull()
    expect(await m.get_bmc_mac()).toBeNull()
  })

  it('get_os_install_device: the smallest disk of >= 4 GiB, or DeviceNotFound under an allow-list of nothing usable', async () => {
    const name = await manager().get_os_install_device()
    expect(name).toMatch(/^\/dev\//)
    await expect(manager({deviceAllowlist: ['/dev/rdk-no-such-disk']}).get_os_install_device()).rejects.toBeInstanceOf(DeviceNotFound)
  })
})

describe('steps', () => {
  const base = {reboot_requested: false, abortable: true}

  it('clean steps: IPA names, priorities, interfaces', () => {
    const steps = manager().get_clean_steps({}, [])
    expect(steps.map((s) => [s.step, s.priority, s.interface])).toEqual([
      ['erase_devices', 10, 'deploy'],
      ['erase_devices_metadata', 99, 'deploy'],
      ['erase_devices_express', 0, 'deploy'],
      ['erase_pstore', 0, 'deploy'],
      ['clean_uefi_nvram', 0, 'deploy'],
      ['delete_configuration', 0, 'raid'],
      ['create_configuration', 0, 'raid'],
      ['burnin_cpu', 0, 'deploy'],
      ['burnin_disk', 0, 'deploy'],
      ['burnin_memory', 0, 'deploy'],
      ['burnin_network', 0, 'deploy'],
      ['burnin_gpu', 0, 'deploy'],
    ])
    for (const s of steps) expect(s).toMatchObject(base)
    expect(steps.find((s) => s.step === 'clean_uefi_nvram')!.argsinfo).toHaveProperty('match_patterns.required', false)
    expect(steps.find((s) => s.step === 'erase_devices')).not.toHaveProperty('argsinfo')
  })

  it('deploy steps, with inject_files at the configured priority', () => {
    const steps = manager({injectFilesPriority: 42}).get_deploy_steps({}, [])
    expect(steps.map((s) => [s.step, s.priority, s.interface])).toEqual([
      ['erase_devices_metadata', 0, 'deploy'],
      ['apply_configuration', 0, 'raid'],
      ['clean_uefi_nvram', 0, 'deploy'],
      ['write_image', 0, 'deploy'],
      ['inject_files', 42, 'deploy'],
    ])
    expect(steps[1]!.argsinfo).toMatchObject({raid_config: {required: true}, delete_existing: {required: false}})
    expect(Object.keys(steps[4]!.argsinfo!)).toEqual(['files', 'verify_ca'])
    for (const s of steps) expect(s).toMatchObject(base)
  })

  it('service steps', () => {
    const steps = manager().get_service_steps({}, [])
    expect(steps.map((s) => s.step)).toEqual([
      'delete_configuration',
      'apply_configuration',
      'create_configuration',
      'burnin_cpu',
      'burnin_gpu',
      'burnin_memory',
      'burnin_network',
      'write_image',
      'inject_files',
      'execute_bootc_install',
    ])
    expect(steps.every((s) => s.priority === 0)).toBe(true)
  })

  it('through the registry: deduplicated step lists, version 1.2, unimplemented steps fail clearly', async () => {
    const m = new GenericHardwareManager()
    m.skipBmcDetect = true
    const registry = new ManagerRegistry()
    await registry.load([m], {config: {...defaultConfig(), diskWaitAttempts: 0}, log: quiet})
    expect(registry.currentVersions()).toEqual({generic_hardware_manager: '1.2'})
    const clean = await registry.getSteps('clean', {}, [])
    expect(Object.keys(clean)).toEqual(['GenericHardwareManager'])
    expect(clean.GenericHardwareManager).toHaveLength(12)
    // software RAID steps exist now (test/hardware-raid.test.ts): no target_raid_config → {}; apply without a config → parameter error
    await expect(registry.dispatchStep('clean', 'create_configuration', {uuid: 'n'}, [], {})).resolves.toEqual({})
    await expect(registry.dispatchStep('deploy', 'apply_configuration', {uuid: 'n'}, [], {})).rejects.toThrow(/raid_config must be a RAID configuration/)
    await expect(registry.dispatchStep('service', 'execute_bootc_install', {}, [], {})).rejects.toBeInstanceOf(NotImplementedYet)
    // burn-in and clean_uefi_nvram exist now (test/hardware-burnin.test.ts): bad settings fail before anything runs
    await expect(registry.dispatchStep('clean', 'burnin_cpu', {driver_info: {agent_burnin_cpu_timeout: 0}}, [], {})).rejects.toThrow(
      /agent_burnin_cpu_timeout must be a positive duration/,
    )
    await expect(registry.dispatchStep('clean', 'clean_uefi_nvram', {}, [], {match_patterns: 'x'})).rejects.toThrow(/match_patterns must be a list of strings/)
    // burnin_disk destroys data: not a service step (IPA)
    await expect(registry.dispatchStep('service', 'burnin_disk', {}, [], {})).rejects.toThrow(/burnin_disk/)
    // inject_files exists now (test/image-inject.test.ts): bad files are a parameter error, none is a no-op
    await expect(registry.dispatchStep('deploy', 'inject_files', {}, [], {files: 'x'})).rejects.toThrow('The `files` argument must be a list, got str')
    await expect(registry.dispatchStep('deploy', 'inject_files', {}, [], {})).resolves.toBeNull()
    // write_image exists now (test/image-deploy.test.ts): without image_info it is a parameter error
    await expect(registry.dispatchStep('deploy', 'write_image', {}, [], {})).rejects.toThrow('Invalid command parameters: image_info must be an object')
    // internal helpers are not reachable as steps
    await expect(registry.dispatchStep('clean', '_guard', {}, [], {})).rejects.toThrow(/Could not find method: _guard/)
  })

  it('through the registry, a higher-ranked manager that implements one inventory piece wins', async () => {
    class Vendor extends HardwareManager {
      evaluate_hardware_support(): number {
        return HardwareSupport.MAINLINE
      }
      async get_system_vendor_info(): Promise<unknown> {
        return {product_name: 'X1', serial_number: 'S1', manufacturer: 'Example Vendor', firmware: {vendor: 'v', version: '1', build_date: ''}}
      }
      async get_bmc_mac(): Promise<string> {
        return '38:68:dd:0a:1b:2c'
      }
    }
    const generic = new GenericHardwareManager()
    generic.skipBmcDetect = true
    const registry = new ManagerRegistry()
    await registry.load([generic, new Vendor()], {config: {...defaultConfig(), diskWaitAttempts: 0}, log: quiet})
    generic.registry = registry
    const inv = (await registry.dispatchToManagers('list_hardware_info')) as Awaited<ReturnType<GenericHardwareManager['list_hardware_info']>>
    expect(inv.system_vendor.manufacturer).toBe('Example Vendor')
    expect(inv.bmc_mac).toBe('38:68:dd:0a:1b:2c')
    expect(inv.cpu.count).toBeGreaterThan(0)
  })

  it('wait_for_disks gives up after disk_wait_attempts and carries on', async () => {
    const m = manager({deviceAllowlist: ['/dev/rdk-no-such-disk'], diskWaitAttempts: 3, diskWaitDelay: 0.05})
    const t0 = performance.now()
    await m.wait_for_disks()
    expect(performance.now() - t0).toBeGreaterThanOrEqual(90)
  })

  it('erase_pstore empties the pstore mount point, and is a no-op without one', async () => {
    expect(pstoreMountPoint('sysfs /sys sysfs rw 0 0\npstore /sys/fs/pstore pstore rw,nosuid,nodev,noexec,relatime 0 0\n')).toBe('/sys/fs/pstore')
    expect(pstoreMountPoint('sysfs /sys sysfs rw 0 0\n')).toBeNull()
    const dir = mkdtempSync(path.join(os.tmpdir(), 'rdk-pstore-'))
    try {
      writeFileSync(path.join(dir, 'dmesg-efi-170000000001'), 'oops')
      mkdirSync(path.join(dir, 'sub'))
      expect(await clearDirectory(dir)).toBe(2)
      expect(readdirSync(dir)).toEqual([])
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
    // Only call the real step where it cannot touch this machine's own crash records.
    if (!pstoreMountPoint(readFileSync('/proc/mounts', 'utf8'))) await expect(manager().erase_pstore({}, [])).resolves.toBeNull()
  })
})
