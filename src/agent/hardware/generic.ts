/**
 * GenericHardwareManager: IPA's default hardware manager (name `generic_hardware_manager`,
 * version 1.2) — hardware inventory, disk cleaning, and the step lists Ironic asks for.
 *
 * Method names are the wire contract (Ironic sends them as step names; the registry dispatches by
 * name), so they are snake_case exactly as IPA spells them. Step methods take
 * `(node, ports, args)` where `args` holds the step's keyword arguments.
 *
 * Implemented: inventory, erase_devices, erase_devices_metadata, erase_devices_express,
 * erase_pstore, erase_block_device, write_image (whole-disk images, src/agent/image/), software RAID
 * (create_configuration, delete_configuration, apply_configuration: raid.ts, docs/raid.md), burn-in
 * (burnin_cpu/memory/disk/network/gpu: burnin.ts, docs/burnin.md), clean_uefi_nvram (nvram.ts).
 * Every other IPA step exists and fails with NotImplementedYet.
 */
import {readFile} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import os from 'node:os'
import {performance} from 'node:perf_hooks'
import {run, ToolMissingError} from '../../common/exec.js'
import {
  BlockDeviceEraseError,
  DeviceNotFound,
  InvalidCommandParamsError,
  HardwareManagerMethodNotFound,
  IncompatibleHardwareMethodError,
  NotImplementedYet,
} from '../errors.js'
import {assertDeviceAllowed} from '../disk/allowlist.js'
import {assertNoSpecialFilesystems, assertNotInUse, devicesInUse} from '../disk/guard.js'
import {isLinuxRaidMember, isVirtualMediaDevice, probeDevice} from '../disk/probe.js'
import {isReadOnlyDevice, kernelName, parentDiskOf} from '../disk/sysfs.js'
import {destroyDiskMetadata} from '../disk/wipe.js'
import {deviceHintsProblem, guessRootDisk, listBlockDevices, matchDeviceHints, skipListFromNode} from './disks.js'
import {ataSecureErase, clearDirectory, isNvme, nvmeSecureErase, pstoreMountPoint, shredDevice} from './erase.js'
import {collectCpu, collectMemory, collectSystemVendor, detectBmc, interfaceAddresses, interfaceInfo, interfaceNames, type BmcInfo} from './inventory.js'
import {deployState, prepareImage, validateImageInfo} from '../image/write.js'
import {collectLldp} from './lldp.js'
import {createSoftwareRaid, deleteSoftwareRaid, softRaidRootDevice, softwareRaidConfig, validateRaidConfig, type RaidConfig} from './raid.js'
import {runningFromRamdisk} from '../system.js'
import {burninCpu, burninDisk, burninGpu, burninMemory, burninNetwork} from './burnin.js'
import {cleanUefiNvram} from './nvram.js'
import {injectFiles} from '../image/inject.js'
import {collectDmi, collectNumaTopology, collectPciDevices, type CollectorRoots} from './collectors.js'
import {HardwareManager, type ManagerRegistry} from './manager.js'
import {
  HardwareSupport,
  type BlockDevice,
  type BootInfo,
  type CPU,
  type Inventory,
  type Memory,
  type NetworkInterface,
  type NodeInfo,
  type Port,
  type Step,
  type SystemVendor,
} from './types.js'

type ArgsInfo = NonNullable<Step['argsinfo']>
type StepArgs = Record<string, unknown> | undefined

/** Which later piece of work brings each not-yet-implemented step (the lead may update these). */
export const NOT_YET_ISSUE: Readonly<Record<string, string>> = {
  execute_bootc_install: 'a later issue',
}

export const RAID_APPLY_CONFIGURATION_ARGSINFO: ArgsInfo = {
  raid_config: {description: 'The RAID configuration to apply.', required: true},
  delete_existing: {description: 'Delete the existing RAID configuration before creating the new one (default: true).', required: false},
}

export const CLEAN_UEFI_NVRAM_ARGSINFO: ArgsInfo = {
  match_patterns: {
    description:
      'Regular expressions matched against UEFI boot entry descriptions and device paths; matching entries are removed. Default: ["^HD\\\\(", "shim.*\\\\.efi", "grub.*\\\\.efi"].',
    required: false,
  },
}

export const INJECT_FILES_ARGSINFO: ArgsInfo = {
  files: {
    description: "Files to inject: a list of {path, partition, content (base64), mode, dirmode}; merged with node.properties['inject_files'].",
    required: false,
  },
  verify_ca: {description: "Whether to verify TLS certificates when fetching content (the agent's setting by default).", required: false},
}

function step(name: string, priority: number, iface: string, argsinfo?: ArgsInfo): Step {
  const s: Step = {step: name, priority, interface: iface, reboot_requested: false, abortable: true}
  if (argsinfo) s.argsinfo = argsinfo
  return s
}

function flag(v: unknown, dflt: boolean): boolean {
  if (v === undefined || v === null) return dflt
  if (typeof v === 'boolean') return v
  if (typeof v === 'number') return v !== 0
  const s = String(v).trim().toLowerCase()
  if (['1', 'true', 'yes', 'on', 'y', 't'].includes(s)) return true
  if (['0', 'false', 'no', 'off', 'n', 'f', ''].includes(s)) return false
  return dflt
}

function intOf(v: unknown, dflt: number): number {
  const n = typeof v === 'number' ? v : Number(v)
  return v === undefined || v === null || !Number.isFinite(n) ? dflt : Math.trunc(n)
}

function hintsOf(v: unknown): Record<string, unknown> | undefined {
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v)
    } catch {
      return undefined
    }
  }
  return v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length ? (v as Record<string, unknown>) : undefined
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Run `fn` over `items` with at most `limit` in flight; settle all. */
async function settleLimited<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const out: PromiseSettledResult<R>[] = new Array(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      try {
        out[i] = {status: 'fulfilled', value: await fn(items[i]!)}
      } catch (reason) {
        out[i] = {status: 'rejected', reason}
      }
    }
  }
  await Promise.all(Array.from({length: Math.max(1, Math.min(limit, items.length))}, worker))
  return out
}

export class GenericHardwareManager extends HardwareManager {
  static override HARDWARE_MANAGER_NAME = 'generic_hardware_manager'
  static override HARDWARE_MANAGER_VERSION = '1.2'

  /** Set from lookup (`agent_skip_bmc_detect`): never run ipmitool. */
  skipBmcDetect = false
  /** The node last received from Ironic (root device hints, skip list); set by the agent. */
  cachedNode?: NodeInfo
  /**
   * When set (or given as `registry` in the manager context), list_hardware_info's pieces and
   * erase_devices' erase_block_device are dispatched through it, so a higher-ranked manager that
   * implements just one of them wins.
   */
  registry?: ManagerRegistry

  private _bmc?: Promise<BmcInfo>

  /** The registry to dispatch through: set directly, or carried by the manager context. */
  private get _dispatcher(): ManagerRegistry | undefined {
    return this.registry ?? (this.ctx as {registry?: ManagerRegistry}).registry
  }

  /**
   * Call an inventory piece through the registry when there is one (so a higher-ranked manager that
   * implements just that piece wins, falling back to this one), else on this manager.
   */
  private async _piece<T>(method: string, ...args: unknown[]): Promise<T> {
    const registry = this._dispatcher
    if (registry) return (await registry.dispatchToManagers(method, ...args)) as T
    const fn = (this as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!
    return (await fn.apply(this, args)) as T
  }

  evaluate_hardware_support(): number {
    return HardwareSupport.GENERIC
  }

  override async initialize(): Promise<void> {
    await this._md_scan_and_assemble()
    await Promise.all([this.skipBmcDetect ? undefined : this._load_ipmi_modules(), this.wait_for_disks()])
  }

  /**
   * IPA assembles existing software RAID arrays at start, so a node whose RAID was made during
   * cleaning deploys onto the same md device after its reboot. Only in a ramdisk (the md modules are
   * loaded first): an agent run as a host process never touches the host's arrays.
   */
  async _md_scan_and_assemble(): Promise<void> {
    if (!(await runningFromRamdisk())) return
    try {
      await run('modprobe', ['-a', 'md_mod', 'raid0', 'raid1', 'raid10', 'raid456'], {allowFailure: true, timeoutMs: 30_000})
      const r = await run('mdadm', ['--assemble', '--scan', '--verbose'], {allowFailure: true, timeoutMs: 120_000})
      if (r.exitCode !== 0) this.ctx.log.info('No new RAID devices assembled during start-up')
      else this.ctx.log.info('software RAID arrays assembled', {output: r.stderr.trim().split('\n').slice(-4)})
    } catch (err) {
      if (err instanceof ToolMissingError) this.ctx.log.warn('mdadm has not been found, RAID devices will not be supported')
      else this.ctx.log.warn('assembling software RAID arrays failed', {err})
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Start-up

  /** IPA loads the IPMI drivers once so /dev/ipmi0 exists for ipmitool. Failures are fine. */
  async _load_ipmi_modules(): Promise<void> {
    for (const mod of ['ipmi_msghandler', 'ipmi_devintf', 'ipmi_si']) {
      try {
        await run('modprobe', [mod], {allowFailure: true, timeoutMs: 15_000})
      } catch {
        return // modprobe not installed
      }
    }
  }

  /** Retry get_os_install_device until a root device shows up, then carry on regardless. */
  async wait_for_disks(): Promise<void> {
    const {diskWaitAttempts: attempts, diskWaitDelay: delay} = this.ctx.config
    if (!attempts) return
    for (let i = 0; i < attempts; i++) {
      try {
        await this.get_os_install_device()
        return
      } catch (err) {
        if (!(err instanceof DeviceNotFound)) {
          this.ctx.log.warn('cannot look for the root device', {err})
          return
        }
        this.ctx.log.debug('still waiting for the root device to appear', {attempt: i + 1, of: attempts})
        if (i < attempts - 1) await sleep(delay * 1000)
      }
    }
    this.ctx.log.warn(`the root device was not detected in ${delay * (attempts - 1)} seconds`)
  }

  // ---------------------------------------------------------------------------------------------
  // Inventory

  /** The full inventory; independent collectors run in parallel. */
  async list_hardware_info(): Promise<Inventory> {
    const start = performance.now()
    this.ctx.log.info('collecting full inventory')
    const [interfaces, cpu, disks, memory, bmc_address, bmc_v6address, system_vendor, boot, bmcMac] = await Promise.all([
      this._piece<NetworkInterface[]>('list_network_interfaces'),
      this._piece<CPU>('get_cpus'),
      this._piece<BlockDevice[]>('list_block_devices'),
      this._piece<Memory>('get_memory'),
      this._piece<string | null>('get_bmc_address'),
      this._piece<string | null>('get_bmc_v6address'),
      this._piece<SystemVendor>('get_system_vendor_info'),
      this._piece<BootInfo>('get_boot_info'),
      this._piece<string | null>('get_bmc_mac').then(
        (mac) => ({mac}),
        (err: unknown) => {
          // No manager could tell the BMC's MAC: leave the key out, as IPA does.
          if (err instanceof IncompatibleHardwareMethodError || err instanceof HardwareManagerMethodNotFound) return undefined
          throw err
        },
      ),
    ])
    const inventory: Inventory = {interfaces, cpu, disks, memory, bmc_address, bmc_v6address, system_vendor, boot, hostname: os.hostname()}
    if (bmcMac) inventory.bmc_mac = bmcMac.mac
    this.ctx.log.info('inventory collected', {seconds: Number(((performance.now() - start) / 1000).toFixed(3))})
    return inventory
  }

  async get_cpus(): Promise<CPU> {
    return collectCpu(this.ctx.log)
  }

  async get_memory(): Promise<Memory> {
    return collectMemory(this.ctx.log)
  }

  /**
   * Disks (and partitions when asked) as Ironic sees them. The device allow-list is applied here,
   * then every device goes through filter_device().
   */
  async list_block_devices(include_partitions = false): Promise<BlockDevice[]> {
    const devices = await listBlockDevices({allowlist: this.ctx.config.deviceAllowlist, includePartitions: include_partitions === true, log: this.ctx.log})
    const out: BlockDevice[] = []
    for (const d of devices) {
      const kept = await this.filter_device(d)
      if (kept) out.push(kept)
    }
    return out
  }

  /** Hook: return the device (possibly changed) to report it, or null to hide it. */
  filter_device(device: BlockDevice): BlockDevice | null | Promise<BlockDevice | null> {
    return device
  }

  /** list_block_devices without the devices node.properties.skip_block_devices names (nor their partitions). */
  async list_block_devices_check_skip_list(node: NodeInfo | undefined, include_partitions = false): Promise<BlockDevice[]> {
    const devices = await this.list_block_devices(include_partitions)
    if (!node) return devices
    const skip = await skipListFromNode(node.properties, devices)
    if (skip.size === 0) return devices
    this.ctx.log.info('skipping devices listed in skip_block_devices', {devices: [...skip]})
    return devices.filter((d) => {
      if (skip.has(d.name)) return false
      const parent = parentDiskOf(kernelName(d.name))
      return !(parent && skip.has(`/dev/${parent}`))
    })
  }

  async list_network_interfaces(): Promise<NetworkInterface[]> {
    const names = await interfaceNames(undefined, this.ctx.log)
    const [lldp, addrs] = await Promise.all([
      this.ctx.config.collectLldp ? this.collect_lldp_data(names) : Promise.resolve(undefined),
      interfaceAddresses(this.ctx.log),
    ])
    const lldpMap = lldp ? new Map(Object.entries(lldp)) : undefined
    const infos = await Promise.all(names.map((n) => interfaceInfo(n, addrs, {log: this.ctx.log, lldp: lldpMap})))
    return infos.filter((i): i is NetworkInterface => i !== null)
  }

  /** One interface (IPA's get_interface_info); IncompatibleHardwareMethodError when it has no MAC. */
  async get_interface_info(interface_name: string): Promise<NetworkInterface> {
    const addrs = await interfaceAddresses(this.ctx.log)
    const lldp = this.ctx.config.collectLldp ? new Map(Object.entries(await this.collect_lldp_data([interface_name]))) : undefined
    const info = await interfaceInfo(interface_name, addrs, {log: this.ctx.log, lldp})
    if (!info) throw new IncompatibleHardwareMethodError(`interface ${interface_name} has no MAC address`)
    return info
  }

  /** Raw LLDP TLVs per interface ([type, hex] pairs); null for interfaces where capture failed. */
  async collect_lldp_data(interface_names: string[]): Promise<Record<string, [number, string][] | null>> {
    const map = await collectLldp(interface_names, this.ctx.config.lldpTimeout, {log: this.ctx.log})
    return Object.fromEntries(map)
  }

  // ---------------------------------------------------------------------------------------------
  // Extra inspection collectors (ipa-inspection-collectors; docs/inspection.md)

  /** sysfs roots for the collect_* methods below; tests point them at fixture trees. */
  collectorRoots: Partial<CollectorRoots> = {}

  /** Inspection collector `pci-devices`: IPA's `pci_devices` list. */
  async collect_pci_devices(_data?: Record<string, unknown>): Promise<Record<string, unknown>> {
    return {pci_devices: await collectPciDevices(this.collectorRoots.pciDevices, this.ctx.log)}
  }

  /** Inspection collector `numa-topology`: `numa_topology`, or nothing (a warning) without usable NUMA data. */
  async collect_numa_topology(_data?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const topology = await collectNumaTopology(this.collectorRoots, this.ctx.log)
    return topology ? {numa_topology: topology} : {}
  }

  /** Inspection collector `dmi-decode`: `dmi` (bios, cpu, memory) from dmidecode. */
  async collect_dmi_decode(_data?: Record<string, unknown>): Promise<Record<string, unknown>> {
    return {dmi: await collectDmi(this.ctx.log)}
  }

  /** Inspection collector `lldp`: `lldp_raw`, the raw TLVs of every interface but lo. */
  async collect_lldp(_data?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const names = await interfaceNames(this.collectorRoots.classNet, this.ctx.log)
    return {lldp_raw: await this._piece('collect_lldp_data', names)}
  }

  private _bmcInfo(): Promise<BmcInfo> {
    if (this.skipBmcDetect) return Promise.resolve({address: null, v6address: null, mac: null})
    this._bmc ??= detectBmc(this.ctx.log)
    return this._bmc
  }

  async get_bmc_address(): Promise<string | null> {
    return (await this._bmcInfo()).address
  }

  async get_bmc_v6address(): Promise<string | null> {
    return (await this._bmcInfo()).v6address
  }

  /** null without an IPMI device; IncompatibleHardwareMethodError when the BMC reports no MAC (IPA). */
  async get_bmc_mac(): Promise<string | null> {
    const info = await this._bmcInfo()
    if (info.address === null) return null
    if (info.mac === null) throw new IncompatibleHardwareMethodError('no BMC MAC address found')
    return info.mac
  }

  async get_system_vendor_info(): Promise<SystemVendor> {
    return collectSystemVendor()
  }

  async get_boot_info(): Promise<BootInfo> {
    return {current_boot_mode: existsSync('/sys/firmware/efi') ? 'uefi' : 'bios', pxe_interface: this.ctx.config.bootif ?? null}
  }

  /**
   * The device to install the OS on: the first matching the node's root device hints, else the
   * smallest disk of at least 4 GiB. Only visible (allow-listed) devices are considered.
   */
  async get_os_install_device(_permit_refresh = false): Promise<string> {
    const node = this.cachedNode
    const hints = hintsOf(node?.instance_info?.root_device) ?? hintsOf(node?.properties?.root_device)
    const devices = await this.list_block_devices_check_skip_list(node)
    if (!hints) {
      // Software RAID in the node's target_raid_config: deploy onto its (root) md device.
      const md = await softRaidRootDevice(softwareRaidConfig(node?.target_raid_config) ?? this._appliedRaidConfig, devices, this.ctx.log)
      if (md) {
        this.ctx.log.info('picked the software RAID root device', {device: md})
        return md
      }
      if (devices.length === 0) throw new DeviceNotFound('No devices found')
      const dev = guessRootDisk(devices)
      if (!dev) {
        throw new DeviceNotFound(
          'No suitable device was found for deployment - root device hints were not provided and all found block devices are smaller than 4GiB.',
        )
      }
      return dev.name
    }
    const problem = deviceHintsProblem(hints)
    if (problem) {
      throw new DeviceNotFound(
        `No devices could be found using the root device hints ${JSON.stringify(hints)} because they failed to validate. Error: ${problem}`,
      )
    }
    const dev = devices.find((d) => matchDeviceHints(d, hints))
    if (!dev) throw new DeviceNotFound(`No suitable device was found for deployment using these hints ${JSON.stringify(hints)}`)
    this.ctx.log.info('picked root device', {device: dev.name, hints})
    return dev.name
  }

  // ---------------------------------------------------------------------------------------------
  // Steps

  override get_clean_steps(_node: NodeInfo, _ports: Port[]): Step[] {
    return [
      step('erase_devices', 10, 'deploy'),
      step('erase_devices_metadata', 99, 'deploy'),
      step('erase_devices_express', 0, 'deploy'),
      step('erase_pstore', 0, 'deploy'),
      step('clean_uefi_nvram', 0, 'deploy', CLEAN_UEFI_NVRAM_ARGSINFO),
      step('delete_configuration', 0, 'raid'),
      step('create_configuration', 0, 'raid'),
      step('burnin_cpu', 0, 'deploy'),
      step('burnin_disk', 0, 'deploy'),
      step('burnin_memory', 0, 'deploy'),
      step('burnin_network', 0, 'deploy'),
      step('burnin_gpu', 0, 'deploy'),
    ]
  }

  override get_deploy_steps(_node: NodeInfo, _ports: Port[]): Step[] {
    return [
      step('erase_devices_metadata', 0, 'deploy'),
      step('apply_configuration', 0, 'raid', RAID_APPLY_CONFIGURATION_ARGSINFO),
      step('clean_uefi_nvram', 0, 'deploy', CLEAN_UEFI_NVRAM_ARGSINFO),
      // Proxied by Ironic's own out-of-band write_image step: the priority here does not matter.
      step('write_image', 0, 'deploy'),
      step('inject_files', this.ctx.config.injectFilesPriority, 'deploy', INJECT_FILES_ARGSINFO),
    ]
  }

  override get_service_steps(_node: NodeInfo, _ports: Port[]): Step[] {
    return [
      step('delete_configuration', 0, 'raid'),
      step('apply_configuration', 0, 'raid', RAID_APPLY_CONFIGURATION_ARGSINFO),
      step('create_configuration', 0, 'raid'),
      step('burnin_cpu', 0, 'deploy'),
      step('burnin_gpu', 0, 'deploy'),
      step('burnin_memory', 0, 'deploy'),
      step('burnin_network', 0, 'deploy'),
      step('write_image', 0, 'deploy'),
      step('inject_files', 0, 'deploy', INJECT_FILES_ARGSINFO),
      step('execute_bootc_install', 0, 'deploy'),
    ]
  }

  // ---------------------------------------------------------------------------------------------
  // Cleaning

  private get _allowlist(): readonly string[] {
    return this.ctx.config.deviceAllowlist
  }

  private _guardSpecial(node: NodeInfo | undefined): boolean {
    if (!this.ctx.config.guardSpecialFilesystems) return false
    const allowed = flag(node?.driver_internal_info?.wipe_special_filesystems, false) || flag(node?.driver_info?.wipe_special_filesystems, false)
    return !allowed
  }

  /**
   * Why IPA would leave a device alone (virtual media, RAID member), or null. Read-only is handled
   * by the callers, which differ.
   */
  private async _skipReason(dev: string): Promise<string | null> {
    const probe = await probeDevice(dev)
    if (await isVirtualMediaDevice(dev, probe)) return 'virtual media device'
    if (await isLinuxRaidMember(dev, probe)) return 'RAID member device'
    return null
  }

  /** The safety guard: refuse (ProtectedDeviceError) devices in use or holding special filesystems. */
  private async _guard(node: NodeInfo | undefined, devices: readonly string[], inUse?: Map<string, string>): Promise<void> {
    const used = inUse ?? (await devicesInUse())
    for (const dev of devices) {
      assertDeviceAllowed(dev, this._allowlist)
      await assertNotInUse(dev, used)
      if (this._guardSpecial(node)) await assertNoSpecialFilesystems(dev)
    }
  }

  /** Devices the metadata-style steps work on, partitions first (IPA's _list_erasable_devices). */
  private async _erasableDevices(node: NodeInfo, step: string): Promise<BlockDevice[]> {
    const devices = await this.list_block_devices_check_skip_list(node, true)
    devices.sort((a, b) => (a.name < b.name ? 1 : a.name > b.name ? -1 : 0))
    const out: BlockDevice[] = []
    for (const d of devices) {
      const why = (await this._skipReason(d.name)) ?? ((await isReadOnlyDevice(d.name, this.ctx.log)) ? 'read-only device' : null)
      if (why) {
        this.ctx.log.info(`skipping ${step} of ${why}`, {device: d.name})
        continue
      }
      out.push(d)
    }
    return out
  }

  /** Clean step: wipe signatures and partition tables of every disk and partition. */
  async erase_devices_metadata(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<null> {
    const devices = await this._erasableDevices(node, 'metadata erase')
    await this._guard(
      node,
      devices.map((d) => d.name),
    )
    const errors: [string, string][] = []
    for (const d of devices) {
      try {
        await destroyDiskMetadata(d.name, this._allowlist, this.ctx.log)
      } catch (err) {
        this.ctx.log.error('failed to erase the metadata on a device', {device: d.name, err})
        errors.push([d.name, (err as Error).message])
      }
    }
    if (errors.length) {
      throw new BlockDeviceEraseError(`Failed to erase the metadata on the device(s): ${errors.map(([k, v]) => `"${k}": ${v}`).join('; ')}`)
    }
    return null
  }

  /** Clean step: NVMe secure erase where possible, metadata erase everywhere else. */
  async erase_devices_express(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<null> {
    const devices = await this._erasableDevices(node, 'express erase')
    if (devices.length === 0) {
      this.ctx.log.debug('no erasable devices found')
      return null
    }
    await this._guard(
      node,
      devices.map((d) => d.name),
    )
    const info = node.driver_internal_info ?? {}
    const errors: [string, string][] = []
    for (const d of devices) {
      const whole = parentDiskOf(kernelName(d.name)) === null
      if (whole && isNvme(d.name) && flag(info.agent_enable_nvme_secure_erase, true)) {
        try {
          if (await nvmeSecureErase(d.name, this._allowlist, this.ctx.log)) continue
        } catch (err) {
          if (!(err instanceof BlockDeviceEraseError)) throw err
          this.ctx.log.debug('NVMe secure erase failed, falling back to metadata erase', {device: d.name, err: err.message})
        }
      }
      try {
        await destroyDiskMetadata(d.name, this._allowlist, this.ctx.log)
      } catch (err) {
        this.ctx.log.error('failed to erase a device', {device: d.name, err})
        errors.push([d.name, (err as Error).message])
      }
    }
    if (errors.length) {
      throw new BlockDeviceEraseError(`Failed to conduct an express erase on the device(s): ${errors.map(([k, v]) => `"${k}": ${v}`).join('; ')}`)
    }
    return null
  }

  /**
   * Clean step: erase every disk (secure erase, else shred), `disk_erasure_concurrency` at a time.
   * Returns {"/dev/x": null, ...}; the first failing device's error fails the step.
   */
  async erase_devices(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<Record<string, unknown>> {
    const devices = await this.list_block_devices_check_skip_list(node)
    if (devices.length === 0) return {}
    // Refuse before touching anything if any device that would be erased is protected.
    const inUse = await devicesInUse()
    const toGuard: string[] = []
    for (const d of devices) if (!(await this._skipReason(d.name))) toGuard.push(d.name)
    await this._guard(node, toGuard, inUse)

    const concurrency = Math.max(1, intOf(node.driver_internal_info?.disk_erasure_concurrency, 1))
    const eraseOne = (d: BlockDevice): Promise<unknown> => this._piece('erase_block_device', node, d)
    const settled = await settleLimited(devices, concurrency, eraseOne)
    const results: Record<string, unknown> = {}
    devices.forEach((d, i) => {
      const s = settled[i]!
      if (s.status === 'rejected') throw s.reason
      results[d.name] = s.value ?? null
    })
    return results
  }

  /** Erase one device the best way it supports (IPA's erase_block_device). */
  async erase_block_device(node: NodeInfo, block_device: BlockDevice | string): Promise<null> {
    const dev = typeof block_device === 'string' ? block_device : block_device.name
    assertDeviceAllowed(dev, this._allowlist)
    const why = await this._skipReason(dev)
    if (why) {
      this.ctx.log.info(`skipping erase of ${why}`, {device: dev})
      return null
    }
    await this._guard(node, [dev])
    const info = node.driver_internal_info ?? {}
    if (await isReadOnlyDevice(dev, this.ctx.log)) {
      if (flag(info.agent_erase_skip_read_only, false)) {
        this.ctx.log.info('skipping erase of read-only device', {device: dev})
        return null
      }
      const msg = `Failed to invoke erase of device ${dev} as the device is flagged read-only, and the conductor has not signaled this is a permitted case.`
      this.ctx.log.error(msg)
      throw new BlockDeviceEraseError(msg)
    }

    try {
      if (isNvme(dev)) {
        if (flag(info.agent_enable_nvme_secure_erase, true) && (await nvmeSecureErase(dev, this._allowlist, this.ctx.log))) return null
      } else if (flag(info.agent_enable_ata_secure_erase, true) && (await ataSecureErase(dev, this._allowlist, this.ctx.log))) {
        return null
      }
    } catch (err) {
      if (!(err instanceof BlockDeviceEraseError)) throw err
      // agent_continue_if_ata_erase_failed is the deprecated name, still sent by older Ironic.
      const raw = info.agent_continue_if_secure_erase_failed ?? info.agent_continue_if_ata_erase_failed
      if (!flag(raw, false)) {
        const msg = `Failed to invoke secure erase, fallback to shred is not enabled: ${err.details}`
        this.ctx.log.error(msg)
        throw new IncompatibleHardwareMethodError(msg)
      }
      this.ctx.log.warn('secure erase failed, falling back to shred', {device: dev, err: err.details})
    }

    const iterations = Math.max(0, intOf(info.agent_erase_devices_iterations, 1))
    const zeroize = flag(info.agent_erase_devices_zeroize, true)
    if (iterations === 0 && !zeroize) {
      this.ctx.log.info('not shredding: agent_erase_devices_iterations is 0 and agent_erase_devices_zeroize is off', {device: dev})
      return null
    }
    try {
      await shredDevice(dev, {iterations, zeroize}, this._allowlist, this.ctx.log)
      return null
    } catch (err) {
      if (err instanceof ToolMissingError) throw err
      this.ctx.log.error('erasing block device failed', {device: dev, err})
      throw new IncompatibleHardwareMethodError(`Unable to erase block device ${dev}: device is unsupported. (${(err as Error).message})`)
    }
  }

  /** Clean step: empty the kernel's persistent-store (pstore) crash records, if pstore is mounted. */
  async erase_pstore(_node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<null> {
    const dir = pstoreMountPoint(await readFile('/proc/mounts', 'utf8').catch(() => ''))
    if (!dir) {
      this.ctx.log.debug('no pstore found')
      return null
    }
    const removed = await clearDirectory(dir)
    this.ctx.log.info('cleaned up pstore', {path: dir, entries: removed})
    return null
  }

  // ---------------------------------------------------------------------------------------------
  // Deploy

  /**
   * Deploy step write_image (Ironic's agent deploy proxies its own write_image step here with
   * args image_info and configdrive): standby.prepare_image's work, waited for. The result is
   * what IPA's `cmd.wait()` returns: {result: "prepare_image: image (<id>) written to …"}.
   * Whole-disk images only for now.
   */
  async write_image(_node: NodeInfo, _ports: Port[], args?: StepArgs): Promise<{result: string}> {
    const imageInfo = args?.image_info
    validateImageInfo(imageInfo)
    const registry = this._dispatcher
    const msg = await prepareImage(
      {
        config: this.ctx.config,
        log: this.ctx.log,
        state: deployState(registry ?? this),
        installDevice: async () => String(registry ? await registry.dispatchToManagers('get_os_install_device', true) : await this.get_os_install_device(true)),
      },
      imageInfo,
      (args?.configdrive ?? null) as string | null,
    )
    return {result: `prepare_image: ${msg}`}
  }

  // ---------------------------------------------------------------------------------------------
  // Software RAID (raid.ts, docs/raid.md)

  /** The software RAID config created in this boot (apply_configuration's raid_config has no other home). */
  private _appliedRaidConfig?: RaidConfig

  /** Disks that may hold RAID partitions: every listed disk but the md devices themselves. */
  private async _raidCandidates(node: NodeInfo | undefined): Promise<BlockDevice[]> {
    const devices = await this.list_block_devices_check_skip_list(node)
    return devices.filter((d) => !/^md/.test(kernelName(d.name)))
  }

  /** Clean step (raid interface): the software RAID of node.target_raid_config; {} without one. */
  async create_configuration(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<RaidConfig | Record<string, never>> {
    const raidConfig = node?.target_raid_config
    if (!raidConfig || Object.keys(raidConfig).length === 0) {
      this.ctx.log.debug('No target_raid_config found')
      return {}
    }
    return this._do_create_configuration(node, raidConfig as RaidConfig)
  }

  /** Deploy step (raid interface): validate, delete the existing RAID (unless delete_existing is false), create. */
  async apply_configuration(node: NodeInfo, ports: Port[], args?: StepArgs): Promise<RaidConfig | Record<string, never>> {
    const raidConfig = args?.raid_config as RaidConfig | undefined
    const candidates = await this._raidCandidates(node)
    if (!validateRaidConfig(raidConfig, node?.uuid, candidates.length)) {
      throw new InvalidCommandParamsError('raid_config must be a RAID configuration with logical_disks')
    }
    if (flag(args?.delete_existing, true)) await this.delete_configuration(node, ports)
    return this._do_create_configuration(node, raidConfig ?? {})
  }

  private async _do_create_configuration(node: NodeInfo, raidConfig: RaidConfig): Promise<RaidConfig | Record<string, never>> {
    if (!softwareRaidConfig(raidConfig)) {
      this.ctx.log.debug('No Software RAID config found')
      return {}
    }
    this.ctx.log.info('Creating Software RAID')
    const devices = await this._raidCandidates(node)
    validateRaidConfig(raidConfig, node?.uuid, devices.length)
    const created = await createSoftwareRaid({config: this.ctx.config, log: this.ctx.log, node, devices}, raidConfig)
    // A deploy with only an apply_configuration step (no target_raid_config) still deploys onto it.
    this._appliedRaidConfig = raidConfig
    return created
  }

  /** Clean step (raid interface): stop and erase every software RAID array found (not only the node's). */
  async delete_configuration(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<null> {
    await deleteSoftwareRaid({config: this.ctx.config, log: this.ctx.log, allDevices: () => this.list_block_devices_check_skip_list(node, true)})
    this._appliedRaidConfig = undefined
    return null
  }

  // ---------------------------------------------------------------------------------------------
  // Steps that exist in IPA but come later in rdk: they fail clearly.

  private _notYet(name: string): never {
    throw new NotImplementedYet(name, NOT_YET_ISSUE[name] ?? 'a later issue')
  }

  /** Clean/deploy step clean_uefi_nvram: remove UEFI boot entries whose device path matches (nvram.ts). */
  async clean_uefi_nvram(_node: NodeInfo, _ports: Port[], args?: StepArgs): Promise<unknown> {
    return cleanUefiNvram({log: this.ctx.log}, args?.match_patterns)
  }
  /** Burn-in steps (burnin.ts, docs/burnin.md): settings from node.driver_info.agent_burnin_*. */
  async burnin_cpu(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<unknown> {
    return burninCpu({log: this.ctx.log}, node)
  }
  async burnin_disk(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<unknown> {
    const devices = await this.list_block_devices_check_skip_list(node)
    return burninDisk({log: this.ctx.log, allowlist: this._allowlist, guardSpecial: this._guardSpecial(node)}, node, devices)
  }
  async burnin_memory(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<unknown> {
    return burninMemory({log: this.ctx.log}, node)
  }
  async burnin_network(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<unknown> {
    return burninNetwork({log: this.ctx.log}, node)
  }
  async burnin_gpu(node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<unknown> {
    return burninGpu({log: this.ctx.log}, node)
  }
  /** Deploy step inject_files: src/agent/image/inject.ts. */
  async inject_files(node: NodeInfo, _ports: Port[], args?: StepArgs): Promise<null> {
    const registry = this._dispatcher
    return injectFiles(
      {
        config: this.ctx.config,
        log: this.ctx.log,
        installDevice: async () => String(registry ? await registry.dispatchToManagers('get_os_install_device', true) : await this.get_os_install_device(true)),
      },
      node as unknown as Record<string, unknown>,
      args?.files,
      args?.verify_ca,
    )
  }
  async execute_bootc_install(_node: NodeInfo, _ports: Port[], _args?: StepArgs): Promise<never> {
    this._notYet('execute_bootc_install')
  }
}
