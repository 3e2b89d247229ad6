/**
 * Loop devices for tests that erase or write disks on the host. Only devices attached here are
 * ever named to the agent (its --device-allowlist), and only they are detached afterwards.
 */
import {createHash} from 'node:crypto'
import {open, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {run} from '../../src/common/exec.js'

export interface LoopDevice {
  device: string
  file: string
  size: number
}

export async function attachLoop(dir: string, name: string, sizeBytes: number, opts: {readOnly?: boolean} = {}): Promise<LoopDevice> {
  const file = join(dir, `${name}.img`)
  await writeFile(file, '')
  const fh = await open(file, 'r+')
  await fh.truncate(sizeBytes)
  await fh.close()
  const args = ['--find', '--show', '--partscan', ...(opts.readOnly ? ['--read-only'] : []), file]
  const {stdout} = await run('losetup', args)
  const device = stdout.trim()
  if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`losetup returned an unexpected device: ${device}`)
  return {device, file, size: sizeBytes}
}

export async function detachLoop(loop: LoopDevice): Promise<void> {
  await run('losetup', ['--detach', loop.device], {allowFailure: true})
}

/** Fill a device with pseudo-random bytes and put a GPT + ext4 partition on it (something to erase). */
export async function dirtyDevice(device: string, sizeBytes: number): Promise<void> {
  const fh = await open(device, 'r+')
  try {
    const chunk = Buffer.alloc(1024 * 1024)
    for (let off = 0; off < sizeBytes; off += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((Math.random() * 0xffffffff) >>> 0, i)
      await fh.write(chunk, 0, Math.min(chunk.length, sizeBytes - off), off)
    }
    await fh.sync()
  } finally {
    await fh.close()
  }
  await run('sgdisk', ['-o', '-n', '1:0:+8M', '-n', '2:0:0', device])
  await run('partprobe', [device], {allowFailure: true})
}

export async function sha256OfDevice(device: string): Promise<string> {
  const h = createHash('sha256')
  const fh = await open(device, 'r')
  try {
    for await (const chunk of fh.createReadStream()) h.update(chunk as Buffer)
  } finally {
    await fh.close().catch(() => undefined)
  }
  return h.digest('hex')
}

export function sha256OfZeroes(size: number): string {
  const h = createHash('sha256')
  const zero = Buffer.alloc(1024 * 1024)
  for (let off = 0; off < size; off += zero.length) h.update(zero.subarray(0, Math.min(zero.length, size - off)))
  return h.digest('hex')
}
