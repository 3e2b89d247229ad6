/**
 * The main end-to-end test: our tiny ramdisk booted in qemu (TCG, 1 vCPU, 1 GiB) with two virtual
 * disks (virtio rdk-disk0, NVMe rdk-disk1), driven by a REAL Ironic 21.4 and a REAL ironic-inspector
 * 11.1 on the host's loopback (fake power/boot/management; the Ironic launcher lets fake
 * management accept boot device `disk`, see test/helpers/ironic-launcher.py). The lab
 * (test/helpers/vm-lab.ts) boots the VM whenever Ironic waits for an agent and stops it when the
 * node leaves that phase, as a real node would reboot.
 *
 *  1. inspect: the agent posts its inventory to inspector's /v1/continue (ipa-inspection-callback-url);
 *     inspector fills cpus / memory_mb / local_gb / cpu_arch; the node ends `manageable`.
 *  2. provide: automated cleaning (metadata erase) → `available`.
 *  3. deploy a whole-disk qcow2 with a config drive → `active`; disk0 holds the image (apart from
 *     the MBR, which now also lists the config drive) and the config-2 partition; disk1 untouched.
 *  4. undeploy (`deleted`) → cleaning → `available`; both disks' partition tables are gone.
 */
import {createHash, randomBytes} from 'node:crypto'
import {readFileSync} from 'node:fs'
import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import type {DiskSpec} from '../src/boot/qemu.js'
import {readAt, writeAt} from './helpers/disk-files.js'
import {makeRawImage, MIB, qemuImg, sha256File} from './helpers/image.js'
import {startLab, type Lab} from './helpers/vm-lab.js'

const MAC = '52:54:00:5e:71:01'
const GiB = 1024 ** 3
const IMG_MIB = 24
/** A marker in the middle of the NVMe disk: metadata-only cleaning must leave it alone. */
const MARK_OFFSET = 1 * GiB
const MARK = randomBytes(64 * 1024)

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

describe('in-VM lab: real Ironic + ironic-inspector drive the tiny ramdisk in qemu', () => {
  let dir: string
  let lab: Lab
  let uuid: string
  let disks: DiskSpec[]
  let raw: string
  let cd: Buffer
  let nvmeAfterClean: string

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-ironic-vm-'))
    lab = await startLab({dir, inspector: true, heartbeatTimeout: 30})
    disks = [
      // ≥ 4 GiB: the agent waits for a disk IPA would pick as root device before it starts.
      {path: join(dir, 'disk0.img'), size: '5G', bus: 'virtio'},
      {path: join(dir, 'disk1.img'), size: '2G', bus: 'nvme'},
    ]
    for (const d of disks) await run('qemu-img', ['create', '-q', '-f', 'raw', d.path, String(d.size)])
    await writeAt(disks[1]!.path, MARK_OFFSET, MARK)
    const node = await lab.ironic.createNode({
      name: 'rdk-vm-e2e',
      // BIOS: a whole-disk image then needs no bootloader installation. The hint is the virtio
      // disk's serial (qemu serial=rdk-disk0), which the inventory has from udev's database.
      properties: {root_device: {serial: 'rdk-disk0'}, capabilities: 'boot_mode:bios'},
    })
    uuid = node.uuid
    expect(node.inspect_interface).toBe('inspector')
    await lab.ironic.createPort(uuid, MAC)
    await lab.ironic.setProvisionState(uuid, 'manage')
    await lab.ironic.waitForProvisionState(uuid, ['manageable'], {timeoutMs: 60_000})
  }, 900_000)

  let passed = 0
  let lastSerial = ''
  /** Assertion failures after a phase also show the VM's serial tail and the services' logs. */
  const phase = async (fn: () => Promise<void>) => {
    lastSerial = ''
    try {
      await fn()
    } catch (err) {
      const e = err as Error
      if (!/--- VM serial/.test(e.message) && lab) {
        e.message += `\n--- VM serial of this phase (last lines) ---\n${lastSerial.slice(-6000)}\n${await lab.diagnostics(40)}`
      }
      throw e
    }
  }
  afterAll(async () => {
    await lab?.stop()
    // Keep the logs (Ironic, inspector, VM serial) of a failed run.
    if (dir && passed === 4) await rm(dir, {recursive: true, force: true})
    else if (dir) console.error(`ironic-vm e2e: logs kept in ${dir}`)
  })

  it(
    '1. inspect: the agent reports to ironic-inspector, the node gets its properties and is manageable',
    () =>
      phase(async () => {
        const r = await lab.runPhase(uuid, {target: 'inspect', until: ['manageable'], boot: {mac: MAC, disks}, timeoutMs: 300_000})
        lastSerial = r.serial
        expect(r.states).toContain('inspect wait')
        expect(r.boots).toBe(1)
        expect(r.node.last_error).toBeNull()
        const status = await lab.inspector!.status(uuid)
        expect(status.finished).toBe(true)
        expect(status.error).toBeNull()
        const data = await lab.inspector!.data(uuid)
        const inv = data.inventory
        // What inspector 11.1's scheduler and root_disk_selection hooks derive, as strings.
        const props = r.node.properties
        expect(props.cpus).toBe('1')
        expect(props.cpus).toBe(String(inv.cpu.count))
        expect(props.cpu_arch).toBe('x86_64')
        expect(props.cpu_arch).toBe(inv.cpu.architecture)
        expect(props.memory_mb).toBe(String(inv.memory.physical_mb))
        expect(Number(props.memory_mb)).toBeGreaterThanOrEqual(900)
        expect(Number(props.memory_mb)).toBeLessThanOrEqual(1024)
        // root_device {serial: rdk-disk0} picks the 5 GiB virtio disk; inspector keeps 1 GiB spare.
        expect(props.local_gb).toBe('4')
        expect(data.root_disk.name).toBe('/dev/vda')
        expect(data.root_disk.size).toBe(5 * GiB)
        const names = inv.disks.map((d: {name: string}) => d.name).sort()
        expect(names).toEqual(['/dev/nvme0n1', '/dev/vda'])
        const vda = inv.disks.find((d: {name: string}) => d.name === '/dev/vda')
        expect(vda.serial).toBe('rdk-disk0')
        // udev runs in the ramdisk: by_path comes from /dev/disk/by-path.
        expect(vda.by_path).toMatch(/^\/dev\/disk\/by-path\/(virtio-)?pci-0000:/)
        const nvme = inv.disks.find((d: {name: string}) => d.name === '/dev/nvme0n1')
        expect(nvme.serial).toBe('rdk-disk1')
        expect(nvme.size).toBe(2 * GiB)
        const nic = inv.interfaces.find((i: {mac_address: string}) => i.mac_address === MAC)
        expect(nic.ipv4_address).toBe('10.0.2.15')
        expect(data.boot_interface).toBe(`01-${MAC.replace(/:/g, '-')}`)
        // The serial console shows the agent posting to inspector before its lookup.
        expect(r.serial).toMatch(/inspection data posted/)
        // The `logs` collector's tarball, as inspector stored it ([processing] ramdisk_logs_dir).
        const logDir = join(lab.inspector!.dir, 'ramdisk-logs')
        const tarball = (await readdir(logDir)).find((f) => f.startsWith(`${uuid}_`) && f.endsWith('.tar.gz'))
        expect(tarball, `no ramdisk logs for ${uuid} in ${logDir}`).toBeDefined()
        const agentLog = (await run('tar', ['-xzOf', join(logDir, tarball!), 'agent.log'])).stdout
        expect(agentLog).toMatch(/rdk agent starting/)
        // IPA's bundle (as log.collect_system_logs): system state too, e.g. the inspection boot's cmdline.
        const cmdline = (await run('tar', ['-xzOf', join(logDir, tarball!), 'proc_cmdline'])).stdout
        expect(cmdline).toMatch(/ipa-inspection-callback-url=http:\/\/10\.0\.2\.2:\d+\/v1\/continue/)
        expect((await run('tar', ['-tzf', join(logDir, tarball!)])).stdout).toMatch(/^dmesg\.txt$/m)
        // Ironic stored the inventory it fetched from inspector.
        const stored = await lab.ironic.api('GET', `/v1/nodes/${uuid}/inventory`)
        expect(stored.body.inventory.cpu.count).toBe(inv.cpu.count)
        passed++
      }),
    360_000,
  )

  it(
    '2. provide: automated cleaning erases metadata, the node becomes available',
    () =>
      phase(async () => {
        if (passed !== 1) throw new Error('an earlier phase failed: this one cannot run')
        const r = await lab.runPhase(uuid, {target: 'provide', until: ['available'], boot: {mac: MAC, disks}, timeoutMs: 300_000})
        lastSerial = r.serial
        expect(r.states).toContain('clean wait')
        expect(r.node.last_error).toBeNull()
        // erase_devices_metadata on both disks (the lab sets erase_devices_priority = 0).
        expect(r.serial).toMatch(/"disk metadata destroyed","device":"\/dev\/vda"/)
        expect(r.serial).toMatch(/"disk metadata destroyed","device":"\/dev\/nvme0n1"/)
        expect(r.serial).not.toMatch(/inspection data posted/)
        // Metadata only: the marker in the middle of the NVMe disk survives.
        expect((await readAt(disks[1]!.path, MARK_OFFSET, MARK.length)).equals(MARK)).toBe(true)
        nvmeAfterClean = await sha256File(disks[1]!.path)
        passed++
      }),
    360_000,
  )

  it(
    '3. deploy: a whole-disk qcow2 with a config drive lands on the virtio disk (rdk-disk0); the node is active',
    () =>
      phase(async () => {
        if (passed !== 2) throw new Error('an earlier phase failed: this one cannot run')
        raw = join(dir, 'image.raw')
        await makeRawImage(raw, IMG_MIB, {dos: true})
        const qcow2 = join(dir, 'image.qcow2')
        await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', '-c', raw, qcow2])
        const url = lab.serve('/image.qcow2', qcow2)
        await run('mkfs.vfat', ['-C', '-n', 'config-2', join(dir, 'cd.img'), '1024'])
        cd = readFileSync(join(dir, 'cd.img'))
        await lab.ironic.api('PATCH', `/v1/nodes/${uuid}`, [
          {op: 'add', path: '/instance_info/image_source', value: url},
          {op: 'add', path: '/instance_info/image_os_hash_algo', value: 'sha256'},
          {op: 'add', path: '/instance_info/image_os_hash_value', value: await sha256File(qcow2)},
        ])
        const r = await lab.runPhase(uuid, {
          target: 'active',
          extra: {configdrive: gzipSync(cd).toString('base64')},
          until: ['active'],
          boot: {mac: MAC, disks},
          timeoutMs: 420_000,
        })
        lastSerial = r.serial
        expect(r.states).toContain('wait call-back')
        expect(r.node.last_error).toBeNull()
        expect(r.serial).toMatch(/image written/)
        // Ironic HEADed the image through the guest proxy, never directly.
        expect(lab.proxy.seen.some((s) => s.allowed && s.path === '/image.qcow2')).toBe(true)
        expect(lab.proxy.seen.filter((s) => !s.allowed)).toEqual([])

        const disk0 = disks[0]!.path
        const head = await readAt(disk0, 0, IMG_MIB * MIB)
        const img = readFileSync(raw)
        // The image apart from the MBR sector (the config drive partition was added to its table).
        expect(sha(head.subarray(512))).toBe(sha(img.subarray(512)))
        const table = JSON.parse((await run('sfdisk', ['--json', disk0])).stdout).partitiontable
        expect(table.id).toBe('0x1234abcd')
        expect(table.partitions).toHaveLength(2)
        const part = table.partitions[1]
        expect(part.start * 512).toBeGreaterThanOrEqual(IMG_MIB * MIB)
        expect((await readAt(disk0, part.start * 512, cd.length)).equals(cd)).toBe(true)
        // The other disk is untouched by the deploy.
        expect(await sha256File(disks[1]!.path)).toBe(nvmeAfterClean)
        passed++
      }),
    480_000,
  )

  it(
    '4. undeploy: deleted → cleaning → available; partition tables gone',
    () =>
      phase(async () => {
        if (passed !== 3) throw new Error('an earlier phase failed: this one cannot run')
        const r = await lab.runPhase(uuid, {target: 'deleted', until: ['available'], boot: {mac: MAC, disks}, timeoutMs: 300_000})
        lastSerial = r.serial
        expect(r.states).toContain('clean wait')
        expect(r.node.last_error).toBeNull()
        expect(r.node.instance_info.image_source).toBeUndefined()
        for (const d of disks) {
          // erase_devices_metadata zeroes the primary partition table area (and the backup GPT).
          expect((await readAt(d.path, 0, 33 * 512)).equals(Buffer.alloc(33 * 512)), d.path).toBe(true)
        }
        const sf = await run('sfdisk', ['--json', disks[0]!.path], {allowFailure: true})
        expect(sf.stdout).not.toMatch(/0x1234abcd/)
        expect((await readAt(disks[1]!.path, MARK_OFFSET, MARK.length)).equals(MARK)).toBe(true)
        passed++
      }),
    360_000,
  )
})
