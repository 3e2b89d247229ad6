/**
 * Partition tables and partition device paths: the table as sfdisk reads it, the kernel's name for
 * partition n of a disk, partition numbers, the ESP type, and the MBR disk signature.
 */
import {open} from 'node:fs/promises'
import {run} from '../../common/exec.js'

/** GPT partition type GUID of an EFI system partition. */
export const ESP_TYPE_GPT = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b'
/** MBR partition type id of an EFI system partition, as sfdisk prints it. */
export const ESP_TYPE_MBR = 'ef'

export interface PartitionEntry {
  node: string
  start: number
  size: number
  type: string
  uuid?: string
  name?: string
}

export interface PartitionTable {
  label: 'gpt' | 'dos' | string
  id?: string
  sectorsize: number
  partitions: PartitionEntry[]
}

/** The disk's partition table (sfdisk --json), or undefined when it has none. */
export async function partitionTable(device: string): Promise<PartitionTable | undefined> {
  const r = await run('sfdisk', ['--json', device], {allowFailure: true})
  if (r.exitCode !== 0) {
    if (/does not contain a recognized partition table/i.test(r.stderr) || r.stdout.trim() === '') return undefined
    throw new Error(r.stderr.trim() || `sfdisk --json ${device} failed with exit code ${r.exitCode}`)
  }
  const t = (JSON.parse(r.stdout) as {partitiontable: PartitionTable}).partitiontable
  return {...t, sectorsize: t.sectorsize ?? 512, partitions: t.partitions ?? []}
}

/** Partition number from a partition's device path or sfdisk node name (/dev/sda3 → 3, /dev/nvme0n1p2 → 2); NaN if none. */
export function partitionNumber(node: string): number {
  return Number(/(\d+)$/.exec(node)?.[1] ?? NaN)
}

/** The kernel's name for partition `n` of `device` (a `p` separates it from a name ending in a digit). */
export function partitionPath(device: string, n: number): string {
  return /\d$/.test(device) ? `${device}p${n}` : `${device}${n}`
}

/** Is a partition-table entry an EFI system partition (GPT type GUID, or MBR type ef)? */
export function isEspType(label: string, type: string): boolean {
  return label === 'gpt' ? type.toLowerCase() === ESP_TYPE_GPT : type.toLowerCase() === ESP_TYPE_MBR
}

/** IPA's get_disk_identifier: the MBR disk signature (bytes 440-443) as 0x%08x. */
export async function diskIdentifier(device: string): Promise<string> {
  const fh = await open(device, 'r')
  try {
    const buf = Buffer.alloc(4)
    await fh.read(buf, 0, 4, 440)
    return `0x${buf.readUInt32LE(0).toString(16).padStart(8, '0')}`
  } finally {
    await fh.close()
  }
}

/** `blockdev --getsize64`: the device's size in bytes. */
export async function blockDeviceBytes(device: string): Promise<number> {
  return Number((await run('blockdev', ['--getsize64', device])).stdout.trim())
}
