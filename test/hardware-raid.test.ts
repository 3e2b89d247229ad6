/**
 * Software RAID, the pure parts (src/agent/hardware/raid.ts): IPA's validation rules and texts, the
 * partition plan per holder disk, mdadm's argv, and parsing `mdadm --detail` and /proc/mdstat.
 * The real thing runs in a VM: test/hardware-raid-vm.e2e.test.ts.
 */
import {describe, expect, it} from 'vitest'
import {SoftwareRAIDError} from '../src/agent/errors.js'
import {
  holderOf,
  mdadmCreateArgs,
  nodeBootMode,
  parseCapabilities,
  parseMdadmDetail,
  parseMdstat,
  partitionBounds,
  partitionTableType,
  pickImageEsp,
  pickImageRoot,
  placeLogicalDisks,
  planRaid,
  raidStart,
  softwareRaidConfig,
  validateRaidConfig,
  volumeNameOf,
} from '../src/agent/hardware/raid.js'
import type {BlockDevice} from '../src/agent/hardware/types.js'
import {partitionPath} from '../src/agent/disk/partitions.js'

const GIB = 1024 ** 3
const disk = (name: string, size = 10 * GIB, extra: Partial<BlockDevice> = {}): BlockDevice =>
  ({
    name,
    model: 'QEMU',
    size,
    rotational: true,
    wwn: null,
    serial: `S-${name.slice(5)}`,
    vendor: '0x1af4',
    wwn_with_extension: null,
    wwn_vendor_extension: null,
    hctl: null,
    by_path: null,
    logical_sectors: 512,
    physical_sectors: 512,
    tran: null,
    ...extra,
  }) as BlockDevice
const TWO = [disk('/dev/vda'), disk('/dev/vdb')]
const R1MAX = {logical_disks: [{size_gb: 'MAX', raid_level: '1', controller: 'software'}]}

const MDADM_DETAIL = `/dev/md0:
           Version : 1.2
     Creation Time : Fri Nov 27 12:00:00 2026
        Raid Level : raid1
        Array Size : 1046528 (1022.00 MiB 1071.64 MB)
     Used Dev Size : 1046528 (1022.00 MiB 1071.64 MB)
      Raid Devices : 2
     Total Devices : 2
       Persistence : Superblock is persistent

       Update Time : Fri Nov 27 12:00:05 2026
             State : clean, resyncing
    Active Devices : 2
   Working Devices : 2
    Failed Devices : 0
     Spare Devices : 0

Consistency Policy : resync

     Resync Status : 12% complete

              Name : rdk:md0  (local to host rdk)
              UUID : 3b1f2c4d:5e6f7a8b:9c0d1e2f:3a4b5c6d
            Events : 3

    Number   Major   Minor   RaidDevice State
       0     254        1        0      active sync   /dev/vda1
       1     254       17        1      active sync   /dev/vdb1
`

const MDSTAT = `Personalities : [raid1] [raid0]
md1 : active raid0 vdb2[1] vda2[0]
      4190208 blocks super 1.2 512k chunks

md0 : active raid1 vdb1[1] vda1[0](F)
      1046528 blocks super 1.2 [2/1] [U_]
      [==>..................]  resync = 12.1% (127424/1046528) finish=1.2min speed=12742K/sec

md127 : inactive sdc1[0](S)
      1046528 blocks super 1.2

unused devices: <none>
`

describe('validateRaidConfig: IPA validate_configuration', () => {
  const fails = (cfg: unknown, re: RegExp, n = 2) => {
    let err: unknown
    try {
      validateRaidConfig(cfg, 'node-1', n)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(SoftwareRAIDError)
    expect((err as SoftwareRAIDError).message).toMatch(re)
  }

  it('accepts RAID-1 MAX, and RAID-1 + RAID-0/5/6/1+0 with enough disks; an empty config is false', () => {
    expect(validateRaidConfig(R1MAX, 'n', 2)).toBe(true)
    for (const [level, n] of [
      ['0', 2],
      ['1+0', 4],
      ['5', 3],
      ['6', 4],
    ] as const) {
      expect(
        validateRaidConfig(
          {
            logical_disks: [
              {size_gb: 10, raid_level: '1', controller: 'software'},
              {size_gb: 'MAX', raid_level: level, controller: 'software'},
            ],
          },
          'n',
          n,
        ),
      ).toBe(true)
    }
    expect(validateRaidConfig({}, 'n', 2)).toBe(false)
    expect(validateRaidConfig(undefined, 'n', 2)).toBe(false)
  })

  it('refuses what IPA refuses, with its texts, all errors joined', () => {
    fails({logical_disks: []}, /^Software RAID caused unknown error: RAID config contains no logical disks$/)
    fails(
      {logical_disks: [{size_gb: 'MAX', raid_level: '0', controller: 'software'}]},
      /Could not validate Software RAID config for node-1: Software RAID Configuration requires RAID-1 for the first logical disk/,
    )
    fails({logical_disks: [{size_gb: 'MAX', raid_level: '1'}]}, /requires all logical disks to have 'controller'='software'/)
    const three = {size_gb: 1, raid_level: '1', controller: 'software'}
    fails({logical_disks: [three, three, three]}, /requires one or two logical disks/)
    fails({logical_disks: [{...R1MAX.logical_disks[0], physical_disks: [{name: '/dev/vda'}]}]}, /must be a list with at least 2 items/)
    fails({logical_disks: [{...R1MAX.logical_disks[0], physical_disks: ['/dev/vda', '/dev/vdb']}]}, /must be a list of device hints \(dictionaries\)/)
    const second = (raid_level: string, size_gb: unknown = 10) => ({logical_disks: [R1MAX.logical_disks[0], {size_gb, raid_level, controller: 'software'}]})
    fails(second('1', 'MAX'), /only one RAID device with size 'MAX'/)
    fails(second('4'), /does not support RAID level 4/)
    fails(second('5'), /not possible for RAID level 5 with only 2 block devices found\./, 2)
    fails(second('6'), /not possible for RAID level 6 with only 3 block devices found\./, 3)
    // two problems at once: both reported, "; "-joined
    fails({logical_disks: [{size_gb: 'MAX', raid_level: '5'}]}, /'controller'='software'; Software RAID Configuration requires RAID-1/)
  })

  it('softwareRaidConfig: only configs with a software logical disk', () => {
    expect(softwareRaidConfig(R1MAX)).toBe(R1MAX)
    expect(softwareRaidConfig({logical_disks: [{size_gb: 'MAX', raid_level: '1', controller: 'PERC H730'}]})).toBeNull()
    expect(softwareRaidConfig({})).toBeNull()
    expect(softwareRaidConfig(null)).toBeNull()
  })
})

describe('boot mode and partition table type (IPA utils)', () => {
  it('capabilities as a string or a dict; secure boot implies uefi; instance_info wins', () => {
    expect(parseCapabilities({capabilities: 'boot_mode:uefi,disk_label:gpt'})).toEqual({boot_mode: 'uefi', disk_label: 'gpt'})
    expect(parseCapabilities({capabilities: {boot_mode: 'bios'}})).toEqual({boot_mode: 'bios'})
    expect(nodeBootMode({properties: {capabilities: 'boot_mode:uefi'}}, 'bios')).toBe('uefi')
    expect(nodeBootMode({properties: {capabilities: 'secure_boot:true'}}, 'bios')).toBe('uefi')
    expect(nodeBootMode({instance_info: {deploy_boot_mode: 'bios'}, properties: {capabilities: 'boot_mode:uefi'}}, 'uefi')).toBe('bios')
    expect(nodeBootMode({driver_internal_info: {deploy_boot_mode: 'uefi'}}, 'bios')).toBe('uefi')
    expect(nodeBootMode({properties: {capabilities: 'boot_mode:weird'}}, 'bios')).toBe('bios')
    expect(nodeBootMode(undefined, 'uefi')).toBe('uefi')
  })

  it('gpt in uefi mode; else disk_label (default msdos)', () => {
    expect(partitionTableType({properties: {capabilities: 'boot_mode:uefi,disk_label:msdos'}}, 'bios')).toBe('gpt')
    expect(partitionTableType({properties: {capabilities: 'disk_label:gpt'}}, 'bios')).toBe('gpt')
    expect(partitionTableType({instance_info: {capabilities: {disk_label: 'msdos'}}, properties: {capabilities: 'disk_label:gpt'}}, 'bios')).toBe('msdos')
    expect(partitionTableType({}, 'bios')).toBe('msdos')
  })
})

describe('the partition plan and mdadm argv', () => {
  it('raid start: 551MiB in uefi (ESP room), 8MiB on bios+gpt (BIOS boot room), the first usable sector on bios+msdos', () => {
    expect(raidStart('uefi', 'gpt')).toBe('551MiB')
    expect(raidStart('bios', 'gpt')).toBe('8MiB')
    expect(raidStart('bios', 'msdos', 2048)).toBe('2048s')
    expect(partitionBounds(10, '551MiB')).toEqual({start: '551MiB', end: '10GiB', next: 10})
    expect(partitionBounds(20, 10)).toEqual({start: '10GiB', end: '30GiB', next: 30})
    expect(partitionBounds(-1, 30)).toEqual({start: '30GiB', end: '-1', next: '-1'})
  })

  it('partition names: sda1, vdb1, nvme0n1p1, loop0p1', () => {
    expect(['/dev/sda', '/dev/vdb', '/dev/nvme0n1', '/dev/loop0', '/dev/mmcblk0'].map((d) => partitionPath(d, 1))).toEqual([
      '/dev/sda1',
      '/dev/vdb1',
      '/dev/nvme0n1p1',
      '/dev/loop0p1',
      '/dev/mmcblk0p1',
    ])
  })

  it('RAID-1 MAX on BIOS (no capabilities): msdos, one partition per disk from the first usable sector, md0 over both', () => {
    const plan = planRaid({uuid: 'n', target_raid_config: R1MAX}, R1MAX, TWO, {ramdiskMode: 'bios', firstUsableSector: () => 2048})
    expect(plan.table).toBe('msdos')
    expect(plan.bootMode).toBe('bios')
    expect(plan.holders).toEqual(['/dev/vda', '/dev/vdb'])
    expect(plan.partitions).toEqual([
      {device: '/dev/vda', start: '2048s', end: '-1', number: 1},
      {device: '/dev/vdb', start: '2048s', end: '-1', number: 1},
    ])
    expect(plan.arrays.map((a) => a.args)).toEqual([
      ['--create', '/dev/md0', '--force', '--run', '--metadata=1', '--level', '1', '--name', 'md0', '--raid-devices', '2', '/dev/vda1', '/dev/vdb1'],
    ])
  })

  it('UEFI, two volumes with the MAX one listed first: gpt, 551MiB of ESP room, the MAX volume made last (md1)', () => {
    const cfg = {
      logical_disks: [
        {size_gb: 'MAX', raid_level: '1', controller: 'software', volume_name: 'root'},
        {size_gb: 10, raid_level: '1+0', controller: 'software'},
      ],
    }
    const nvme = [disk('/dev/nvme0n1'), disk('/dev/nvme1n1')]
    const plan = planRaid({properties: {capabilities: 'boot_mode:uefi'}}, cfg, nvme, {ramdiskMode: 'bios'})
    expect(plan.table).toBe('gpt')
    expect(plan.partitions).toEqual([
      {device: '/dev/nvme0n1', start: '551MiB', end: '10GiB', number: 1},
      {device: '/dev/nvme1n1', start: '551MiB', end: '10GiB', number: 1},
      {device: '/dev/nvme0n1', start: '10GiB', end: '-1', number: 2},
      {device: '/dev/nvme1n1', start: '10GiB', end: '-1', number: 2},
    ])
    expect(plan.arrays.map((a) => a.args)).toEqual([
      ['--create', '/dev/md0', '--force', '--run', '--metadata=1', '--level', '10', '--name', 'md0', '--raid-devices', '2', '/dev/nvme0n1p1', '/dev/nvme1n1p1'],
      ['--create', '/dev/md1', '--force', '--run', '--metadata=1', '--level', '1', '--name', 'root', '--raid-devices', '2', '/dev/nvme0n1p2', '/dev/nvme1n1p2'],
    ])
  })

  it('BIOS with disk_label gpt: 8MiB of room for a BIOS boot partition', () => {
    const plan = planRaid({properties: {capabilities: 'disk_label:gpt'}}, R1MAX, TWO, {ramdiskMode: 'bios'})
    expect(plan.table).toBe('gpt')
    expect(plan.partitions[0]).toEqual({device: '/dev/vda', start: '8MiB', end: '-1', number: 1})
  })

  it('physical_disks hints pick one disk each, in order; no match or no disk left fails as IPA', () => {
    const three = [disk('/dev/sda', 10 * GIB), disk('/dev/sdb', 20 * GIB), disk('/dev/sdc', 20 * GIB)]
    const {holders, logicalDisks} = placeLogicalDisks(three, [
      {size_gb: 'MAX', raid_level: '1', controller: 'software', physical_disks: [{size: 20}, {size: '>= 20'}]},
    ])
    expect(logicalDisks[0]!.block_devices).toEqual(['/dev/sdb', '/dev/sdc'])
    expect(holders).toEqual(['/dev/sdb', '/dev/sdc'])
    expect(() => placeLogicalDisks(three, [{physical_disks: [{size: 99}, {size: 20}]}])).toThrow(/No candidates for physical disk \{"size":99\}/)
    expect(() => placeLogicalDisks(three, [{physical_disks: [{size: 10}, {size: 10}]}])).toThrow(
      /No candidates left for physical disk \{"size":10\} from the list \["\/dev\/sda"\] after picking \["\/dev\/sda"\]/,
    )
    const a = mdadmCreateArgs(0, {raid_level: '1', block_devices: ['/dev/sdb', '/dev/sdc'], volume_name: 'os'})
    expect(a).toEqual([
      '--create',
      '/dev/md0',
      '--force',
      '--run',
      '--metadata=1',
      '--level',
      '1',
      '--name',
      'os',
      '--raid-devices',
      '2',
      '/dev/sdb1',
      '/dev/sdc1',
    ])
  })

  it('a size_gb that is not a number or MAX is refused before anything is written', () => {
    const bad = {logical_disks: [{size_gb: 'lots', raid_level: '1', controller: 'software'}]}
    expect(() => planRaid({}, bad, TWO, {ramdiskMode: 'bios'})).toThrow(SoftwareRAIDError)
  })
})

describe('parsing mdadm and /proc/mdstat', () => {
  it('mdadm --detail: level, size, state, name (volume name after host:), components', () => {
    const d = parseMdadmDetail(MDADM_DETAIL)
    expect(d).toMatchObject({
      device: '/dev/md0',
      level: 'raid1',
      arraySizeKiB: 1046528,
      state: 'clean, resyncing',
      name: 'rdk:md0',
      uuid: '3b1f2c4d:5e6f7a8b:9c0d1e2f:3a4b5c6d',
      raidDevices: 2,
      components: ['/dev/vda1', '/dev/vdb1'],
    })
    expect(volumeNameOf(d)).toBe('md0')
    expect(volumeNameOf(parseMdadmDetail(MDADM_DETAIL.replace('rdk:md0', 'md0')))).toBeNull()
  })

  it('/proc/mdstat: arrays, levels, members without roles and flags, sizes, [n/m]', () => {
    const a = parseMdstat(MDSTAT)
    expect(a.map((x) => x.name)).toEqual(['md1', 'md0', 'md127'])
    expect(a[1]).toEqual({name: 'md0', state: 'active', level: 'raid1', members: ['vdb1', 'vda1'], blocks: 1046528, total: 2, up: 1})
    expect(a[0]).toMatchObject({level: 'raid0', members: ['vdb2', 'vda2'], blocks: 4190208, total: null})
    expect(a[2]).toMatchObject({state: 'inactive', level: null, members: ['sdc1']})
    expect(parseMdstat('Personalities : \nunused devices: <none>\n')).toEqual([])
  })

  it('holder disks: the parent of a partition, a whole-disk member itself', () => {
    const parents: Record<string, string> = {vda1: 'vda', nvme0n1p2: 'nvme0n1'}
    const parentOf = (k: string) => parents[k] ?? null
    expect(holderOf('/dev/vda1', parentOf)).toBe('/dev/vda')
    expect(holderOf('/dev/nvme0n1p2', parentOf)).toBe('/dev/nvme0n1')
    expect(holderOf('/dev/sdc', parentOf)).toBe('/dev/sdc')
  })
})

describe('the image on the md device (install_bootloader with software RAID)', () => {
  const parts: {dev: string; probe: Record<string, string>}[] = [
    {dev: '/dev/md0p1', probe: {TYPE: 'vfat', PART_ENTRY_TYPE: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'}},
    {dev: '/dev/md0p2', probe: {TYPE: 'ext4', UUID: 'aaaa-root'}},
    {dev: '/dev/md0p3', probe: {TYPE: 'ext4', UUID: 'bbbb-data'}},
  ]
  it('finds the ESP by its GPT type, the root filesystem by UUID or else the first Linux filesystem', () => {
    expect(pickImageEsp(parts)).toBe('/dev/md0p1')
    expect(pickImageEsp([{dev: '/dev/md0p1', probe: {TYPE: 'vfat', PART_ENTRY_TYPE: '0xef'}}])).toBe('/dev/md0p1')
    expect(pickImageEsp(parts.slice(1))).toBeNull()
    expect(pickImageRoot(parts, 'bbbb-data')).toBe('/dev/md0p3')
    expect(pickImageRoot(parts, null)).toBe('/dev/md0p2')
    expect(pickImageRoot(parts.slice(0, 1), null)).toBeNull()
  })
})

describe('isMdDevice (what the bootloader code asks of the install device)', () => {
  it('an array has an md directory in sysfs; disks and partitions on arrays do not', async () => {
    const {mkdtemp, mkdir, rm} = await import('node:fs/promises')
    const {tmpdir} = await import('node:os')
    const {join} = await import('node:path')
    const {isMdDevice} = await import('../src/agent/hardware/raid.js')
    const sys = await mkdtemp(join(tmpdir(), 'rdk-sysblock-'))
    try {
      await mkdir(join(sys, 'md0', 'md'), {recursive: true})
      await mkdir(join(sys, 'md0p1', 'partition'), {recursive: true})
      await mkdir(join(sys, 'vda'), {recursive: true})
      expect(await isMdDevice('/dev/md0', sys)).toBe(true)
      expect(await isMdDevice('/dev/md0p1', sys)).toBe(false)
      expect(await isMdDevice('/dev/vda', sys)).toBe(false)
    } finally {
      await rm(sys, {recursive: true, force: true})
    }
  })
})
