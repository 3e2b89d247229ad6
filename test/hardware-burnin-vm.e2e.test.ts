/**
 * Burn-in through a REAL Ironic 21.4's manual cleaning, in a VM: the tiny ramdisk built with the
 * `burnin` element (stress-ng, fio and their libraries) boots in qemu (TCG, 1 vCPU) with one virtio
 * disk; the node goes manageable, then `clean` with clean_steps burnin_cpu, burnin_memory and
 * burnin_disk, whose settings come from driver_info (a few seconds each, 64 MiB for the memory
 * stressor, one fio loop). Ironic runs with [agent] deploy_logs_collect = always, so at the end of
 * cleaning it fetches the agent's log.collect_system_logs bundle into a local directory: the test
 * reads the agent's own report of each step from it (stress-ng's metrics, fio's JSON figures), and
 * checks fio's effect on the disk file (its verify blocks replace the zeros at the start).
 */
import {mkdtemp, open, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {run} from '../src/common/exec.js'
import type {DiskSpec} from '../src/boot/qemu.js'
import {startLab, type Lab} from './helpers/vm-lab.js'

const MAC = '52:54:00:5e:71:b1'

describe('burn-in steps through real Ironic manual cleaning in a VM', () => {
  let dir: string
  let lab: Lab
  let uuid: string
  let disks: DiskSpec[]
  let ok = false
  let buildMs = 0

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-burnin-vm-'))
    await run('npm', ['run', 'build'], {timeoutMs: 300_000})
    const t0 = Date.now()
    lab = await startLab({
      dir,
      buildElements: ['burnin'],
      ironicConfig: {agent: {deploy_logs_collect: 'always', deploy_logs_storage_backend: 'local', deploy_logs_local_path: join(dir, 'ramdisk-logs')}},
    })
    buildMs = Date.now() - t0
    disks = [{path: join(dir, 'disk0.img'), size: '5G', bus: 'virtio'}]
    for (const d of disks) await run('qemu-img', ['create', '-q', '-f', 'raw', d.path, String(d.size)])
    const node = await lab.ironic.createNode({
      name: 'rdk-burnin-vm',
      driverInfo: {
        agent_burnin_cpu_timeout: 5,
        agent_burnin_vm_vm: 1,
        agent_burnin_vm_timeout: '5s',
        'agent_burnin_vm_vm-bytes': '64M',
        agent_burnin_fio_disk_loops: 1,
        agent_burnin_fio_disk_runtime: 5,
      },
    })
    uuid = node.uuid
    await lab.ironic.createPort(uuid, MAC)
    await lab.ironic.setProvisionState(uuid, 'manage')
    await lab.ironic.waitForProvisionState(uuid, ['manageable'], {timeoutMs: 60_000})
  }, 900_000)

  afterAll(async () => {
    await lab?.stop()
    if (dir && ok) await rm(dir, {recursive: true, force: true})
    else if (dir) console.error(`burnin-vm e2e: logs kept in ${dir}`)
  })

  it('manual cleaning runs burnin_cpu, burnin_memory and burnin_disk and the node returns to manageable', async () => {
    const t0 = Date.now()
    const r = await lab.runPhase(uuid, {
      target: 'clean',
      extra: {
        clean_steps: [
          {interface: 'deploy', step: 'burnin_cpu'},
          {interface: 'deploy', step: 'burnin_memory'},
          {interface: 'deploy', step: 'burnin_disk'},
        ],
      },
      until: ['manageable'],
      boot: {mac: MAC, disks, memoryMiB: 1280},
      timeoutMs: 420_000,
    })
    const phaseSeconds = (Date.now() - t0) / 1000
    expect(r.states).toContain('clean wait')
    expect(r.node.provision_state).toBe('manageable')
    expect(r.node.last_error).toBeNull()
    expect(r.boots).toBe(1)

    // The agent's log bundle Ironic collected at the end of cleaning.
    const logDir = join(dir, 'ramdisk-logs')
    const tarball = (await readdir(logDir)).find((f) => f.startsWith(`${uuid}_`) && f.endsWith('.tar.gz'))
    expect(tarball, `no ramdisk logs in ${logDir}`).toBeDefined()
    const agentLog = (await run('tar', ['-xzOf', join(logDir, tarball!), 'agent.log'])).stdout
    const records = agentLog
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, any>)
    const find = (msg: string) => records.find((x) => x.msg === msg)
    const cpu = find('burn-in stress-ng (cpu) finished')
    const vm = find('burn-in stress-ng (vm) finished')
    const fio = find('burn-in fio (disk) finished')
    expect(cpu, agentLog.slice(-4000)).toBeDefined()
    expect(cpu!.metrics.cpu.bogo_ops).toBeGreaterThan(0)
    expect(cpu!.metrics.cpu.real_time).toBeGreaterThanOrEqual(4.5)
    expect(vm!.metrics.vm.real_time).toBeGreaterThanOrEqual(4.5)
    // the command lines the agent ran, as IPA builds them from driver_info
    const commands = records.filter((x) => /^burn-in .* command$/.test(x.msg)).map((x) => x.command.join(' '))
    expect(commands).toEqual([
      'stress-ng --cpu 0 --timeout 5 --metrics-brief',
      'stress-ng --vm 1 --timeout 5s --vm-bytes 64M --metrics-brief',
      expect.stringMatching(
        /^fio --rw readwrite --bs 4k --direct 1 --ioengine libaio --iodepth 32 --verify crc32c .*--loops 1 --runtime 5 .*--time_based .*--name \/dev\/vda --filename \/dev\/vda$/,
      ),
    ])
    expect(fio!.jobs).toHaveLength(1)
    expect(fio!.jobs[0]).toMatchObject({name: '/dev/vda', error: 0})
    expect(fio!.jobs[0].write_bytes).toBeGreaterThan(0)
    expect(fio!.jobs[0].read_bytes).toBeGreaterThan(0)

    // fio really wrote the virtual disk: its start (zeros before) now holds fio's verify blocks.
    const fh = await open(disks[0]!.path, 'r')
    const head = Buffer.alloc(64 * 1024)
    await fh.read(head, 0, head.length, 0)
    await fh.close()
    expect(head.some((x) => x !== 0)).toBe(true)
    console.log(
      `burnin-vm: build + lab ${(buildMs / 1000).toFixed(0)} s, cleaning phase ${phaseSeconds.toFixed(0)} s, fio wrote ${fio!.jobs[0].write_bytes} bytes`,
    )
    ok = true
  }, 480_000)
})
