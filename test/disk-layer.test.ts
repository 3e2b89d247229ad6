/**
 * src/agent/disk/, the one disk layer under hardware/ and image/: the pure rules (partition paths
 * and numbers, ESP types, lsblk -P parsing) and, on a loop device this test attaches (root
 * required), the rescan, the wait for a partition's device node, blkid probing by offset and by
 * tag, and wipeSignatures. Nothing but that loop device is ever named.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import {assertDeviceAllowed} from '../src/agent/disk/allowlist.js'
import {blockDeviceBytes, isEspType, partitionNumber, partitionPath, partitionTable} from '../src/agent/disk/partitions.js'
import {findByTag, lsblkColumns, parseLsblkPairs, probeDevice} from '../src/agent/disk/probe.js'
import {rescanDevice, waitForBlockDevice} from '../src/agent/disk/settle.js'
import {deviceSize, partitionsOf} from '../src/agent/disk/sysfs.js'
import {wipeSignatures} from '../src/agent/disk/wipe.js'
import {attachLoop, type LoopDevice} from './helpers/loop.js'

describe('disk/ pure rules', () => {
  it('partition paths and numbers: a p after a name ending in a digit, the trailing number back', () => {
    expect(partitionPath('/dev/sda', 3)).toBe('/dev/sda3')
    expect(partitionPath('/dev/nvme0n1', 2)).toBe('/dev/nvme0n1p2')
    expect(partitionPath('/dev/loop7', 1)).toBe('/dev/loop7p1')
    expect(partitionPath('/dev/md0', 1)).toBe('/dev/md0p1')
    for (const [dev, n] of [
      ['/dev/sda', 3],
      ['/dev/nvme0n1', 12],
      ['/dev/md127', 1],
    ] as const) {
      expect(partitionNumber(partitionPath(dev, n))).toBe(n)
    }
    expect(partitionNumber('/dev/sda')).toBeNaN()
  })

  it('ESP types: the GPT GUID (any case) on gpt, ef on dos, not the other way round', () => {
    expect(isEspType('gpt', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B')).toBe(true)
    expect(isEspType('dos', 'ef')).toBe(true)
    expect(isEspType('gpt', 'ef')).toBe(false)
    expect(isEspType('dos', 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b')).toBe(false)
    expect(isEspType('gpt', '0fc63daf-8483-4772-8e79-3d69d8477de4')).toBe(false)
  })

  it('lsblk -P lines: every KEY="value" pair, empty values kept, blank lines skipped', () => {
    const rows = parseLsblkPairs('NAME="md0" TYPE="raid1" FSTYPE="vfat"\n\nNAME="sda" TYPE="disk" FSTYPE=""\nNAME="sda1" TYPE="part" LOG-SEC="512"\n')
    expect(rows).toEqual([
      {NAME: 'md0', TYPE: 'raid1', FSTYPE: 'vfat'},
      {NAME: 'sda', TYPE: 'disk', FSTYPE: ''},
      {NAME: 'sda1', TYPE: 'part', 'LOG-SEC': '512'},
    ])
  })
})

describe('disk/ on a loop device', () => {
  let dir: string
  let loop: LoopDevice

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rdk-disk-'))
    loop = await attachLoop(dir, 'disk', 64 * 1024 * 1024)
    await run('partx', ['-d', loop.device], {allowFailure: true})
  })

  afterAll(async () => {
    if (loop) {
      await run('partx', ['-d', loop.device], {allowFailure: true})
      await run('losetup', ['--detach', loop.device], {allowFailure: true})
    }
    rmSync(dir, {recursive: true, force: true})
  })

  it('sizes agree (sysfs and blockdev), and the allow-list names only the loop device and its partitions', async () => {
    expect(await deviceSize(loop.device)).toBe(64 * 1024 * 1024)
    expect(await blockDeviceBytes(loop.device)).toBe(64 * 1024 * 1024)
    expect(() => assertDeviceAllowed(loop.device, [loop.device])).not.toThrow()
    expect(() => assertDeviceAllowed('/dev/loop-not-listed', [loop.device])).toThrow(/not in the agent's device allow-list/)
  })

  it('a new GPT partition: rescan makes its node appear, blkid finds it by offset and by PARTLABEL', async () => {
    await run('sgdisk', ['-n', '1:2048:+16M', '-t', '1:ef00', '-c', '1:rdk-disk-test', loop.device])
    await rescanDevice(loop.device)
    const part = partitionPath(loop.device, 1)
    await waitForBlockDevice(part, 5)
    expect(await partitionsOf(loop.device)).toEqual([part])
    const table = await partitionTable(loop.device)
    expect(table?.label).toBe('gpt')
    expect(isEspType(table!.label, table!.partitions[0]!.type)).toBe(true)

    await run('mkfs.vfat', ['-n', 'RDKTEST', part])
    const byOffset = await probeDevice(loop.device, table!.partitions[0]!.start * table!.sectorsize)
    expect(byOffset.TYPE).toBe('vfat')
    expect(byOffset.LABEL).toBe('RDKTEST')
    expect((await probeDevice(loop.device)).PTTYPE).toBe('gpt')
    // blkid -l -t answers from its cache/udev; -p is not used there, so just require a consistent answer.
    const tagged = await findByTag('PARTLABEL=rdk-disk-test', loop.device)
    expect(tagged.every((t) => t === part)).toBe(true)
    expect(await findByTag('PARTLABEL=no-such-label-here', loop.device)).toEqual([])

    // wipeSignatures clears the filesystem signature; blkid then sees only the partition entry.
    expect(await wipeSignatures(part, {force: true})).toBeNull()
    const after = await probeDevice(part)
    expect(after.TYPE).toBeUndefined()
    expect(after.LABEL).toBeUndefined()
    expect(after.PART_ENTRY_NAME).toBe('rdk-disk-test')
    expect(await wipeSignatures('/dev/rdk-no-such-device')).toMatch(/./)
  })

  it("waiting for a device node that never comes fails with IPA's text", async () => {
    await expect(waitForBlockDevice(`${loop.device}p9`, 2)).rejects.toThrow(`Unable to stat device ${loop.device}p9 after attempting to verify 2 times.`)
  })

  it('lsblk -P through lsblkColumns sees the loop device', async () => {
    const rows = await lsblkColumns(['NAME', 'TYPE', 'FSTYPE'])
    expect(rows.find((r) => r.NAME === path.basename(loop.device))?.TYPE).toBe('loop')
  })
})
