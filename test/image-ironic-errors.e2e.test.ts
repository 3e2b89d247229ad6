/**
 * Bad input under a REAL Ironic 21.4 (Debian python3-ironic on 127.0.0.1; fake power and boot, the
 * launcher lets fake management accept boot device `disk`): one node, one Ironic, one allow-listed
 * loop disk for the whole file. Each case deploys (provision `active`) with its own instance_info,
 * root device hints or config drive; the agent (the bundle, as a host process) runs the write_image
 * deploy step and fails it; the node must reach `deploy failed` with the specific reason in
 * last_error, the SAME agent process must still answer GET /v1/status and /v1/commands (listing the
 * failed step), and the disk must not hold a partition table (no half-written bootable image) —
 * or, for an image refused before writing (backing file, virtual size > disk), be unchanged.
 *
 * Between cases the agent process is restarted, because a real node would reboot into a fresh
 * ramdisk: Ironic powers a node off when its deploy fails (the token is wiped then), and the next
 * deploy powers it on again; Ironic expects that deploy to start on an agent with an empty command
 * list. The "keeps serving" checks are made before that restart, on the process that failed.
 */
import {createHash} from 'node:crypto'
import {readFileSync} from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import {mkdtemp, open, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {gzipSync} from 'node:zlib'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {defaultConfig} from '../src/agent/config.js'
import {GenericHardwareManager} from '../src/agent/hardware/generic.js'
import {log} from '../src/agent/log.js'
import {run} from '../src/common/exec.js'
import {startAgentProcess, type AgentProcess} from './helpers/agent-process.js'
import {join, makeRawImage, MIB, qemuImg, startImageServer, type ImageServer} from './helpers/image.js'
import {freePort, startIronic, type Ironic} from './helpers/ironic.js'
import {attachLoop, detachLoop, sha256OfDevice, type LoopDevice} from './helpers/loop.js'

const IMG_MIB = 20
const RETRIES = 2

async function agentMac(): Promise<string> {
  const m = new GenericHardwareManager()
  m.attach({config: defaultConfig(), log})
  const mac = (await m.list_network_interfaces()).map((i) => i.mac_address).find((x) => x && x !== '00:00:00:00:00:00')
  if (!mac) throw new Error('this machine has no network interface with a MAC: the agent could not look up')
  return mac
}

/**
 * GET from the agent on loopback. Ironic 21.4 turns on the agent's auto-TLS (a self-signed
 * certificate it pins after lookup), so this speaks https without verifying the certificate.
 */
function getJson(base: string, path: string): Promise<{status: number; json: any}> {
  const u = new URL(path, base)
  if (u.hostname !== '127.0.0.1') throw new Error(`loopback only: ${base}`)
  const get = u.protocol === 'https:' ? https.get : http.get
  return new Promise((resolve, reject) => {
    const req = get(u, {rejectUnauthorized: false, agent: false, timeout: 30_000}, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => resolve({status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null')}))
    })
    req.on('timeout', () => req.destroy(new Error(`GET ${u.href} timed out`)))
    req.on('error', reject)
  })
}

/** MBR signature or a GPT header on the disk (what a firmware or a bootloader would look for). */
async function partitionTableOn(device: string): Promise<string | null> {
  const fh = await open(device, 'r')
  try {
    const head = Buffer.alloc(1024)
    await fh.read(head, 0, head.length, 0)
    if (head.subarray(512, 520).toString('latin1') === 'EFI PART') return 'gpt'
    if (head[510] === 0x55 && head[511] === 0xaa) return 'mbr'
    return null
  } finally {
    await fh.close()
  }
}

describe('bad input fails the deploy step under a real Ironic; the agent keeps serving', () => {
  let dir: string
  let ironic: Ironic
  let srv: ImageServer
  let disk: LoopDevice
  let agent: AgentProcess | undefined
  let node: any
  let qcow2Sum: string
  let cdGz: string
  const refusedSums = new Map<string, string>()

  const startAgent = async () =>
    startAgentProcess({
      standalone: false,
      args: [
        '--api-url',
        ironic.url,
        '--listen-host',
        '127.0.0.1',
        '--listen-port',
        String(await freePort()),
        '--advertise-host',
        '127.0.0.1',
        '--device-allowlist',
        disk.device,
        '--lookup-interval',
        '1',
        // the 96 MiB loop disk is below the 4 GiB a hint-less guess needs: don't wait 27 s for one at start
        '--disk-wait-attempts',
        '1',
        // IPA's defaults are 9 retries 10 s apart; the bad-download cases would take minutes
        '--image-download-connection-retries',
        String(RETRIES),
        '--image-download-connection-retry-interval',
        '0.2',
      ],
    })

  const patchNode = async (ops: unknown[]) => {
    const r = await ironic.api('PATCH', `/v1/nodes/${node.uuid}`, ops)
    expect(r.status).toBe(200)
  }

  /** Deploy with the node as it is now; returns the failed node and the agent that failed it (still running). */
  const deployAndFail = async (configdrive?: string): Promise<{failed: any; agent: AgentProcess}> => {
    await ironic.setProvisionState(node.uuid, 'active', configdrive ? {configdrive} : undefined)
    await ironic.waitForProvisionState(node.uuid, ['wait call-back'], {timeoutMs: 60_000})
    agent = await startAgent()
    const failed = await ironic.waitForProvisionState(node.uuid, ['deploy failed'], {timeoutMs: 180_000, failStates: ['active']})
    return {failed, agent}
  }

  /** The agent that failed still answers, and its command list shows the failed step with the same error. */
  const assertStillServing = async (a: AgentProcess, error: RegExp) => {
    expect(a.exitStatus()).toBeNull()
    const status = await getJson(a.url, '/v1/status')
    expect(status.status).toBe(200)
    expect(status.json.version).toBeTruthy()
    const cmds = await getJson(a.url, '/v1/commands/')
    expect(cmds.status).toBe(200)
    const step = (cmds.json.commands as any[]).find((c) => c.command_name === 'execute_deploy_step')
    expect(step?.command_status).toBe('FAILED')
    expect(step.command_error.details ?? step.command_error.message).toMatch(error)
  }

  /** Junk where a partition table would be, so a disk left alone is told apart from a wiped one. */
  const markDisk = async () => {
    await run('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', disk.device], {input: 'label: dos\nlabel-id: 0x0badc0de\nstart=2048, size=4096, type=83\n'})
    expect(await partitionTableOn(disk.device)).toBe('mbr')
  }

  let agentRuns = 0
  /** Stop the agent (the node "reboots"); its log stays in the test directory while the file runs. */
  const nextCase = async () => {
    if (agent) {
      await agent.stop()
      await writeFile(join(dir, `agent-${++agentRuns}.log`), agent.logs())
    }
    agent = undefined
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rdk-image-ironic-errors-'))
    disk = await attachLoop(dir, 'disk', 96 * MIB)
    srv = await startImageServer()
    ironic = await startIronic({dir, heartbeatTimeout: 30})

    const raw = join(dir, 'disk.raw')
    await makeRawImage(raw, IMG_MIB, {dos: true})
    const qcow2 = join(dir, 'disk.qcow2')
    await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2])
    qcow2Sum = createHash('sha256').update(readFileSync(qcow2)).digest('hex')
    for (const p of ['/disk.qcow2', '/gone.qcow2', '/truncated.qcow2', '/dropping.qcow2']) srv.files.set(p, qcow2)
    // Refused before the disk is touched: a backing file (an absolute path on this host, which a
    // qemu-img run on the image would open) and a virtual size larger than the 96 MiB disk.
    await qemuImg(['create', '-f', 'qcow2', '-b', raw, '-F', 'raw', join(dir, 'backed.qcow2')])
    await qemuImg(['create', '-f', 'qcow2', join(dir, 'huge.qcow2'), '200M'])
    for (const n of ['backed.qcow2', 'huge.qcow2']) {
      srv.files.set(`/${n}`, join(dir, n))
      refusedSums.set(
        n,
        createHash('sha256')
          .update(readFileSync(join(dir, n)))
          .digest('hex'),
      )
    }
    await run('mkfs.vfat', ['-C', '-n', 'config-2', join(dir, 'cd.img'), '1024'])
    cdGz = gzipSync(readFileSync(join(dir, 'cd.img'))).toString('base64')

    node = await ironic.createNode({
      name: 'rdk-deploy-errors-e2e',
      // BIOS: for a whole-disk image Ironic then needs no image.install_bootloader (not in rdk yet)
      properties: {root_device: {name: disk.device}, capabilities: 'boot_mode:bios'},
      instanceInfo: {image_source: `${srv.url}/disk.qcow2`, image_os_hash_algo: 'sha256', image_os_hash_value: qcow2Sum},
    })
    await ironic.createPort(node.uuid, await agentMac())
    await ironic.setProvisionState(node.uuid, 'manage')
    await ironic.waitForProvisionState(node.uuid, ['manageable'], {timeoutMs: 60_000})
    await ironic.setProvisionState(node.uuid, 'provide')
    await ironic.waitForProvisionState(node.uuid, ['clean wait'], {timeoutMs: 60_000})
    agent = await startAgent()
    const cleaned = await ironic.waitForProvisionState(node.uuid, ['available'], {timeoutMs: 240_000})
    expect(cleaned.last_error).toBeNull()
    await nextCase()
  }, 420_000)

  afterAll(async () => {
    await nextCase()
    await ironic?.stop()
    await srv?.close()
    if (disk) {
      await run('partx', ['-d', disk.device], {allowFailure: true})
      await detachLoop(disk)
    }
    // RDK_KEEP_TEST_DIR=1 keeps Ironic's and the agents' logs for a look after a failure
    if (dir && !process.env.RDK_KEEP_TEST_DIR) await rm(dir, {recursive: true, force: true})
  })

  it('wrong checksum: ImageChecksumError names both sha256 values; the partial image is wiped', async () => {
    const wrong = createHash('sha256').update('not the image').digest('hex')
    await patchNode([{op: 'replace', path: '/instance_info/image_os_hash_value', value: wrong}])
    await markDisk()
    const {failed, agent: a} = await deployAndFail()
    const why = new RegExp(`Image failed to verify against checksum.*image checksum: ${wrong} \\(sha256\\); verification checksum: ${qcow2Sum} \\(sha256\\)`)
    expect(failed.last_error).toMatch(/deploy\.write_image failed/)
    expect(failed.last_error).toMatch(why)
    await assertStillServing(a, why)
    // the image was written in full before the hash could be compared: its table must be gone
    expect(await partitionTableOn(disk.device)).toBeNull()
    await nextCase()
  }, 300_000)

  it('404 (the image vanished after Ironic checked it): the status and the URL, without credentials; the disk is untouched', async () => {
    srv.behaviour.set('/gone.qcow2', {getStatus: 404})
    const url = `http://rdkuser:s3cr3t-pw@127.0.0.1:${srv.port}/gone.qcow2`
    await patchNode([
      {op: 'replace', path: '/instance_info/image_source', value: url},
      {op: 'replace', path: '/instance_info/image_os_hash_value', value: qcow2Sum},
    ])
    await markDisk()
    const {failed, agent: a} = await deployAndFail()
    const why = new RegExp(
      `Download of image .* failed: URL: http://\\*\\*\\*@127\\.0\\.0\\.1:${srv.port}/gone\\.qcow2; .*Received status code 404 from http://\\*\\*\\*@127\\.0\\.0\\.1:${srv.port}/gone\\.qcow2, expected 200`,
    )
    expect(failed.last_error).toMatch(why)
    expect(failed.last_error).not.toMatch(/s3cr3t-pw/)
    await assertStillServing(a, why)
    expect(a.logs()).not.toMatch(/s3cr3t-pw/)
    // a 4xx is final: one GET, no retries
    expect(srv.requests.filter((r) => r.path === '/gone.qcow2' && r.method === 'GET')).toHaveLength(1)
    // the download is opened before the disk is touched: the old table is still there
    expect(await partitionTableOn(disk.device)).toBe('mbr')
    await nextCase()
  }, 300_000)

  it('a truncated body (full Content-Length, fewer bytes): ended early after the retries; the partial image is wiped', async () => {
    srv.behaviour.set('/truncated.qcow2', {truncateAt: 3 * MIB})
    await patchNode([{op: 'replace', path: '/instance_info/image_source', value: `${srv.url}/truncated.qcow2`}])
    await markDisk()
    const {failed, agent: a} = await deployAndFail()
    const why = new RegExp(
      `Download of image .* failed: the download from ${srv.url}/truncated\\.qcow2 ended early, after ${3 * MIB} of \\d+ bytes and ${RETRIES} retries`,
    )
    expect(failed.last_error).toMatch(why)
    await assertStillServing(a, why)
    expect(srv.requests.filter((r) => r.path === '/truncated.qcow2' && r.range === `bytes=${3 * MIB}-`)).toHaveLength(RETRIES)
    expect(await partitionTableOn(disk.device)).toBeNull()
    await nextCase()
  }, 300_000)

  it('the server drops the connection mid-stream every time: Range resumes cannot finish either; wiped', async () => {
    srv.behaviour.set('/dropping.qcow2', {dropAfter: MIB, times: Infinity})
    await patchNode([{op: 'replace', path: '/instance_info/image_source', value: `${srv.url}/dropping.qcow2`}])
    await markDisk()
    const {failed, agent: a} = await deployAndFail()
    const got = (RETRIES + 1) * MIB
    const why = new RegExp(
      `Download of image .* failed: the download from ${srv.url}/dropping\\.qcow2 ended early, after ${got} of \\d+ bytes and ${RETRIES} retries`,
    )
    expect(failed.last_error).toMatch(why)
    await assertStillServing(a, why)
    expect(srv.requests.filter((r) => r.path === '/dropping.qcow2' && r.range).map((r) => r.range)).toEqual([`bytes=${MIB}-`, `bytes=${2 * MIB}-`])
    expect(await partitionTableOn(disk.device)).toBeNull()
    await nextCase()
  }, 300_000)

  it("a config drive that is base64 but not gzip: IPA's decompression error (Ironic itself refuses non-base64)", async () => {
    await patchNode([{op: 'replace', path: '/instance_info/image_source', value: `${srv.url}/disk.qcow2`}])
    await markDisk()
    // Ironic's API answers 400 "Invalid configdrive format" to text that is not base64, so the
    // agent only ever sees base64: here of bytes that are not gzip.
    const {failed, agent: a} = await deployAndFail(Buffer.from('this is not a gzipped ISO image').toString('base64'))
    const why = new RegExp(
      `Encountered error while decompressing and writing config drive for node ${node.uuid}\\. Error: the config drive is not gzip-compressed data \\(incorrect header check\\)`,
    )
    expect(failed.last_error).toMatch(why)
    await assertStillServing(a, why)
    // The config drive is decoded before anything is written (IPA writes the image first): the
    // disk still has the marker table.
    expect(await partitionTableOn(disk.device)).toBe('mbr')
    await nextCase()
  }, 300_000)

  for (const [name, why] of [
    ['backed.qcow2', /Security: Image failed safety check: qcow2 image has a backing file/],
    [
      'huge.qcow2',
      /Writing image to device \/dev\/loop\d+ failed with exit code ENOSPC\. .*the image needs 209715200 bytes but \/dev\/loop\d+ holds only 100663296/,
    ],
  ] as const) {
    it(`${name === 'backed.qcow2' ? 'a qcow2 with a backing file' : 'a qcow2 whose virtual size exceeds the disk'}: refused before the disk is touched (every byte unchanged)`, async () => {
      await patchNode([
        {op: 'replace', path: '/instance_info/image_source', value: `${srv.url}/${name}`},
        {op: 'replace', path: '/instance_info/image_os_hash_value', value: refusedSums.get(name)},
      ])
      await markDisk()
      const before = await sha256OfDevice(disk.device)
      try {
        // (a good config drive: it is decoded first, and must not be what fails)
        const {failed, agent: a} = await deployAndFail(cdGz)
        expect(failed.last_error).toMatch(/deploy\.write_image failed/)
        expect(failed.last_error).toMatch(why)
        await assertStillServing(a, why)
        expect(await sha256OfDevice(disk.device)).toBe(before)
        expect(await partitionTableOn(disk.device)).toBe('mbr')
      } finally {
        await patchNode([
          {op: 'replace', path: '/instance_info/image_source', value: `${srv.url}/disk.qcow2`},
          {op: 'replace', path: '/instance_info/image_os_hash_value', value: qcow2Sum},
        ])
        await nextCase()
      }
    }, 300_000)
  }

  it('root device hints that match no disk: DeviceNotFound names the hints; the disk is untouched', async () => {
    await patchNode([{op: 'replace', path: '/properties/root_device', value: {serial: 'rdk-no-such-serial'}}])
    await markDisk()
    const {failed, agent: a} = await deployAndFail(cdGz)
    const why = /No suitable device was found for deployment using these hints \{"serial":"rdk-no-such-serial"\}/
    expect(failed.last_error).toMatch(why)
    await assertStillServing(a, why)
    expect(await partitionTableOn(disk.device)).toBe('mbr')
    await nextCase()
  }, 300_000)

  it('after all that, the same node deploys from `deploy failed` and goes active', async () => {
    await patchNode([{op: 'replace', path: '/properties/root_device', value: {name: disk.device}}])
    await ironic.setProvisionState(node.uuid, 'active', {configdrive: cdGz})
    await ironic.waitForProvisionState(node.uuid, ['wait call-back'], {timeoutMs: 60_000})
    agent = await startAgent()
    const active = await ironic.waitForProvisionState(node.uuid, ['active'], {timeoutMs: 300_000})
    expect(active.last_error).toBeNull()
    const table = JSON.parse((await run('sfdisk', ['--json', disk.device])).stdout).partitiontable
    expect(table.id).toBe('0x1234abcd')
    expect(table.partitions).toHaveLength(2)
  }, 400_000)
})
