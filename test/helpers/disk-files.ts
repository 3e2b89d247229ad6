// Reading and making disk images as plain files on the host (no loop device, no mount): what the
// VM tests use to check a VM's virtual disks after it ran, and to build small UEFI disk images.
import {open, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {run} from '../../src/common/exec.js'

/** Up to `length` bytes of `file` at `offset` (fewer at the end of the file). */
export async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    const {bytesRead} = await fh.read(buf, 0, length, offset)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

export async function writeAt(file: string, offset: number, data: Buffer): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    await fh.write(data, 0, data.length, offset)
  } finally {
    await fh.close()
  }
}

export interface GptPartition {
  number: number
  start: number
  end: number
  /** sgdisk's 4-hex-digit type code (EF00, 8300, FD00…). */
  code: string
  name: string
}

/** GPT partitions of a raw disk file (sgdisk only reads the file); [] when it has no GPT. */
export async function gptPartitions(file: string): Promise<GptPartition[]> {
  const r = await run('sgdisk', ['-p', file], {allowFailure: true})
  const out: GptPartition[] = []
  for (const line of r.stdout.split('\n')) {
    const m = /^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+([0-9A-F]{4})\s*(.*)$/.exec(line)
    if (m) out.push({number: Number(m[1]), start: Number(m[2]), end: Number(m[3]), code: m[4]!, name: m[5]!.trim()})
  }
  return out
}

/**
 * A whole-disk UEFI image `<dir>/uefi.raw`: GPT, an ESP (vfat, label IMAGE-ESP) at 1 MiB holding
 * `loader` as EFI/BOOT/BOOTX64.EFI, then a Linux partition over the rest — with an ext4 without
 * GRUB in it if `ext4Root`. Made with sgdisk, mkfs and mtools on files.
 */
export async function makeUefiImage(dir: string, opts: {imageMib: number; espMib: number; loader: Buffer; ext4Root?: boolean}): Promise<string> {
  const {imageMib, espMib} = opts
  const image = join(dir, 'uefi.raw')
  await run('truncate', ['-s', `${imageMib}M`, image])
  await run('sgdisk', ['-o', '-n', `1:2048:+${espMib}M`, '-t', '1:ef00', '-c', '1:EFI', '-n', '2:0:0', '-t', '2:8300', '-c', '2:root', image])
  const esp = join(dir, 'esp.img')
  await run('mkfs.vfat', ['-C', '-n', 'IMAGE-ESP', esp, String(espMib * 1024)])
  await writeFile(join(dir, 'BOOTX64.EFI'), opts.loader)
  await run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT'])
  await run('mcopy', ['-i', esp, join(dir, 'BOOTX64.EFI'), '::/EFI/BOOT/BOOTX64.EFI'])
  await run('dd', [`if=${esp}`, `of=${image}`, 'bs=1M', 'seek=1', 'conv=notrunc', 'status=none'])
  if (opts.ext4Root) {
    const root = join(dir, 'root.img')
    await run('mkfs.ext4', ['-q', '-F', '-L', 'image-root', root, '16M'])
    await run('dd', [`if=${root}`, `of=${image}`, 'bs=1M', `seek=${1 + espMib}`, 'conv=notrunc', 'status=none'])
  }
  return image
}
