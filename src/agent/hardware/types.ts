/** Shapes shared by hardware managers, the inventory and the extensions (IPA field names). */

export enum HardwareSupport {
  NONE = 0,
  GENERIC = 1,
  MAINLINE = 2,
  SERVICE_PROVIDER = 3,
}

export interface Step {
  step: string
  priority: number
  interface: string
  reboot_requested?: boolean
  abortable?: boolean
  argsinfo?: Record<string, {description: string; required: boolean}>
  requires_ramdisk?: boolean
  args?: Record<string, unknown>
}

/** The node object Ironic sends with steps (a subset of its 59 keys is used). */
export interface NodeInfo {
  uuid?: string
  properties?: Record<string, unknown>
  instance_info?: Record<string, unknown>
  driver_internal_info?: Record<string, unknown>
  driver_info?: Record<string, unknown>
  target_raid_config?: Record<string, unknown>
  [key: string]: unknown
}

export type Port = Record<string, unknown>

export interface BlockDevice {
  name: string
  model: string
  size: number
  rotational: boolean
  wwn: string | null
  serial: string | null
  vendor: string | null
  wwn_with_extension: string | null
  wwn_vendor_extension: string | null
  hctl: string | null
  by_path: string | null
  logical_sectors: number | null
  physical_sectors: number | null
  tran: string | null
}

export interface LldpTlv extends Array<number | string> {
  0: number
  1: string
}

export interface NetworkInterface {
  name: string
  mac_address: string | null
  ipv4_address: string | null
  ipv6_address: string | null
  has_carrier: boolean
  lldp: [number, string][] | null
  vendor: string | null
  product: string | null
  client_id: string | null
  biosdevname: string | null
  speed_mbps: number | null
  pci_address: string | null
  driver: string | null
}

export interface CPU {
  model_name: string
  frequency: string
  count: number
  architecture: string
  flags: string[]
  socket_count: number
}

export interface Memory {
  total: number
  physical_mb: number | null
}

export interface SystemVendor {
  product_name: string
  serial_number: string
  manufacturer: string
  firmware: {vendor: string; version: string; build_date: string}
}

export interface BootInfo {
  current_boot_mode: 'uefi' | 'bios'
  pxe_interface: string | null
}

export interface Inventory {
  interfaces: NetworkInterface[]
  cpu: CPU
  disks: BlockDevice[]
  memory: Memory
  bmc_address: string | null
  bmc_v6address: string | null
  bmc_mac?: string | null
  system_vendor: SystemVendor
  boot: BootInfo
  hostname: string
}
