#!/usr/bin/env node
// Image writing inside a VM: `npm run bench:image-vm` (builds first). The tiny ramdisk (built here
// with an SSH key, or taken from BENCH_VM_IMAGE_DIR) boots in qemu with little RAM (512 MiB) and
// one virtio disk (an 8 GiB sparse raw file); the agent runs standalone (ipa-standalone=1 with a
// token) and is driven through its API on a forwarded port. A loopback HTTP server on this machine
// serves the images; the guest reaches it as 10.0.2.2:<port> (qemu user networking).
//
// The image: a raw disk of BENCH_VM_VSIZE_MIB (default 2048 MiB, 4x the RAM) that is mostly random
// data (64 MiB stripes, a quarter of it holes), an MBR with one partition; its qcow2 made by
// qemu-img. Each round, on a disk that was discarded first (blkdiscard: every run starts on an
// all-zero disk):
//   - dd:        over ssh, `wget -O- http://10.0.2.2:P/img.raw | dd of=/dev/vda bs=4M conv=fsync`:
//                the same raw bytes over the same network to the same disk, through the page cache
//                (busybox dd; the agent does not use O_DIRECT either), timed in the guest
//                (/proc/uptime) from the first byte requested to the fsync.
//   - rdk raw:   standby.prepare_image of img.raw (sha256 on the fly, zero blocks not written)
//   - rdk qcow2: standby.prepare_image of img.qcow2 (converted while streaming; holes not sent)
//   timed on the host from the POST to the command's end (includes the agent's metadata wipe,
//   partition rescans and checks: ~1 s).
// Also: `wget -O /dev/null` of the raw image (what the network alone allows), the agent's peak RSS
// per run (VmHWM of the agent process, reset before each run through /proc/PID/clear_refs), and
// the VM's RAM. Throughput is over the virtual size for all. Goal: rdk >= 90 % of dd.
// Round 1 checks the disk against the raw image (sha256 in the guest). Best of BENCH_VM_ROUNDS (2).
import {execFileSync, spawn} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {closeSync, createReadStream, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync} from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {startVm} from '../dist/boot/qemu.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const MIB = 1024 * 1024
const MEMORY_MIB = Number(process.env.BENCH_VM_MEMORY_MIB ?? 512)
const VSIZE_MIB = Number(process.env.BENCH_VM_VSIZE_MIB ?? 4 * MEMORY_MIB)
const ROUNDS = Number(process.env.BENCH_VM_ROUNDS ?? 2)
const DISK_SIZE = process.env.BENCH_VM_DISK ?? '8G'
const GOAL = {ratio: 0.9}
const TOKEN = randomBytes(24).toString('hex')
const STRIPE_MIB = 64
// Ironic passes the image's os_hash_algo from Glance (Glance's default: sha512); sha256 is the slower one.
const ALGO = process.env.BENCH_VM_HASH ?? 'sha256'

const dir = mkdtempSync(path.join(os.tmpdir(), 'rdk-bench-image-vm-'))
const raw = path.join(dir, 'img.raw')
const qcow2 = path.join(dir, 'img.qcow2')
const fmt = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '?')
const say = (m) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${m}`)

function sha256(file, algo = 'sha256') {
  return new Promise((resolve, reject) => {
    const h = createHash(algo)
    createReadStream(file, {highWaterMark: 4 * MIB})
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject)
  })
}

/** Mostly random data in 64 MiB stripes, every fourth stripe a hole; an MBR with one partition. */
function makeImage() {
  const fd = openSync(raw, 'w')
  ftruncateSync(fd, VSIZE_MIB * MIB)
  let data = 0
  for (let s = 0; s * STRIPE_MIB < VSIZE_MIB; s++) {
    if (s % 4 === 3) continue
    for (let i = 0; i < STRIPE_MIB && s * STRIPE_MIB + i < VSIZE_MIB; i++) {
      writeSync(fd, randomBytes(MIB), 0, MIB, (s * STRIPE_MIB + i) * MIB)
      data++
    }
  }
  // the first MiB holds the partition table and zeros, as a real disk image does
  writeSync(fd, Buffer.alloc(MIB), 0, MIB, 0)
  closeSync(fd)
  execFileSync('sfdisk', ['-q', raw], {input: 'label: dos\nlabel-id: 0x5eed1234\nstart=2048, type=83\n'})
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2])
  return data
}

function serve() {
  const files = {'/img.raw': raw, '/img.qcow2': qcow2}
  const server = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname]
    if (!f) return res.writeHead(404).end()
    res.writeHead(200, {'Content-Length': statSync(f).size})
    if (req.method === 'HEAD') return res.end()
    createReadStream(f, {highWaterMark: MIB}).pipe(res)
  })
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r(server)))
}

/** Build the tiny image with an SSH key (or take BENCH_VM_IMAGE_DIR, built with the key `key` beside it). */
function buildImage() {
  const key = path.join(dir, 'key')
  if (process.env.BENCH_VM_IMAGE_DIR) {
    return {out: process.env.BENCH_VM_IMAGE_DIR, key: process.env.BENCH_VM_SSH_KEY ?? path.join(process.env.BENCH_VM_IMAGE_DIR, '..', 'key')}
  }
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'rdk-bench', '-f', key])
  const out = path.join(dir, 'out')
  try {
    execFileSync(process.execPath, [path.join(ROOT, 'bin/run.js'), 'build', '--output', out, '--ssh-key', `${key}.pub`, '--json'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    })
  } catch (err) {
    throw new Error(`rdk build failed: ${err.stderr?.toString().trim().split('\n').slice(-10).join('\n')}`)
  }
  return {out, key}
}

function sshRunner(vm, key) {
  return (command, timeoutMs = 900_000) =>
    new Promise((resolve, reject) => {
      const child = spawn(
        'ssh',
        [
          '-i',
          key,
          '-p',
          String(vm.hostPort(22)),
          '-o',
          'BatchMode=yes',
          '-o',
          'StrictHostKeyChecking=no',
          '-o',
          'UserKnownHostsFile=/dev/null',
          '-o',
          'ConnectTimeout=60',
          '-o',
          'LogLevel=ERROR',
          'root@127.0.0.1',
          command,
        ],
        {stdio: ['ignore', 'pipe', 'pipe']},
      )
      let out = ''
      let err = ''
      child.stdout.on('data', (d) => (out += d))
      child.stderr.on('data', (d) => (err += d))
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
      child.on('exit', (code) => {
        clearTimeout(t)
        code === 0 ? resolve(out) : reject(new Error(`ssh ${JSON.stringify(command)} exited ${code}: ${err.trim()} ${out.trim()}`))
      })
    })
}

function agentCall(port, method, p, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {host: '127.0.0.1', port, method, path: p, agent: false, headers: body ? {'Content-Type': 'application/json'} : {}, timeout: 60_000},
      (res) => {
        let text = ''
        res.on('data', (d) => (text += d))
        res.on('end', () => resolve({status: res.statusCode, json: text ? JSON.parse(text) : undefined}))
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`${method} ${p} timed out`)))
    req.on('error', reject)
    req.end(body ? JSON.stringify(body) : undefined)
  })
}

/** standby.prepare_image, timed from the POST to the end of the command; throws on failure. */
async function prepareImage(vm, info) {
  const port = vm.hostPort(9999)
  const t0 = performance.now()
  const r = await agentCall(port, 'POST', `/v1/commands/?wait=false&agent_token=${TOKEN}`, {name: 'standby.prepare_image', params: {image_info: info}})
  if (r.status !== 200) throw new Error(`prepare_image answered ${r.status}: ${JSON.stringify(r.json)}`)
  for (;;) {
    const c = await agentCall(port, 'GET', `/v1/commands/${r.json.id}`)
    if (c.json.command_status !== 'RUNNING') {
      const seconds = (performance.now() - t0) / 1000
      if (c.json.command_status !== 'SUCCEEDED') throw new Error(`prepare_image ${c.json.command_status}: ${JSON.stringify(c.json.command_error)}`)
      return seconds
    }
    await new Promise((res) => setTimeout(res, 250))
  }
}

async function main() {
  process.on('exit', () => rmSync(dir, {recursive: true, force: true}))
  say(`image: ${VSIZE_MIB} MiB virtual, mostly random; building it with qemu-img…`)
  const dataMib = makeImage()
  const rawSha256 = await sha256(raw)
  const rawSum = await sha256(raw, ALGO)
  const qSum = await sha256(qcow2, ALGO)
  const qMib = statSync(qcow2).size / MIB
  say(`${dataMib} MiB of data; qcow2 file ${fmt(qMib, 0)} MiB. Building the tiny image with an SSH key…`)
  const {out, key} = buildImage()
  const cmdline = JSON.parse(readFileSync(path.join(out, 'rdk-tiny.manifest.json'), 'utf8')).kernelCmdline ?? ''
  const server = await serve()
  const P = server.address().port
  const guestBase = `http://10.0.2.2:${P}`
  let vm
  const rows = []
  let bad = false
  try {
    vm = await startVm({
      kernel: path.join(out, 'rdk-tiny.kernel'),
      initrd: path.join(out, 'rdk-tiny.initramfs'),
      append: `${cmdline} ipa-standalone=1 ipa-agent-token=${TOKEN}`,
      memoryMiB: MEMORY_MIB,
      disks: [{path: path.join(dir, 'vda.img'), size: DISK_SIZE, bus: 'virtio'}],
      portForwards: [
        {guestPort: 9999, hostPort: 0},
        {guestPort: 22, hostPort: 0},
      ],
    })
    say(`VM: ${MEMORY_MIB} MiB RAM, ${vm.accel}, disk ${DISK_SIZE} virtio; waiting for the agent…`)
    await vm.waitForHttp(9999, '/v1/status', 600_000)
    const ssh = sshRunner(vm, key)
    await ssh('true')
    const pid = (await ssh('cat /run/rdk/agent.pid')).trim()
    const discard = () => ssh('sync; blkdiscard /dev/vda && echo 3 > /proc/sys/vm/drop_caches')
    const resetPeak = () => ssh(`echo 5 > /proc/${pid}/clear_refs`)
    const peakMb = async () => Number(/VmHWM:\s+(\d+)/.exec(await ssh(`cat /proc/${pid}/status`))[1]) / 1024
    const timed = async (cmd) => {
      const o = await ssh(`read a b < /proc/uptime; ${cmd}; read c d < /proc/uptime; echo "T $a $c"`)
      const m = /T ([\d.]+) ([\d.]+)\s*$/.exec(o)
      return Number(m[2]) - Number(m[1])
    }
    const diskSum = async () => (await ssh(`dd if=/dev/vda bs=4M count=${VSIZE_MIB / 4} 2>/dev/null | sha256sum`)).split(/\s/)[0]
    // Warm the host page cache for the image files alike.
    await sha256(raw)
    for (let round = 1; round <= ROUNDS; round++) {
      say(`round ${round}/${ROUNDS}: network only (wget → /dev/null)…`)
      const net = await timed(`wget -q -O /dev/null ${guestBase}/img.raw`)
      await discard()
      say(`round ${round}: dd…`)
      const dd = await timed(`wget -q -O- ${guestBase}/img.raw | dd of=/dev/vda bs=4M conv=fsync 2>/dev/null`)
      if (round === 1 && (await diskSum()) !== rawSha256) {
        bad = true
        say('dd: the disk differs from the raw image!')
      }
      await discard()
      await resetPeak()
      say(`round ${round}: rdk raw…`)
      const r1 = await prepareImage(vm, {id: `raw-${round}`, urls: [`${guestBase}/img.raw`], os_hash_algo: ALGO, os_hash_value: rawSum, disk_format: 'raw'})
      const r1Rss = await peakMb()
      if (round === 1 && (await diskSum()) !== rawSha256) {
        bad = true
        say('rdk raw: the disk differs from the raw image!')
      }
      await discard()
      await resetPeak()
      say(`round ${round}: rdk qcow2…`)
      const r2 = await prepareImage(vm, {id: `qcow2-${round}`, urls: [`${guestBase}/img.qcow2`], os_hash_algo: ALGO, os_hash_value: qSum, disk_format: 'qcow2'})
      const r2Rss = await peakMb()
      if (round === 1 && (await diskSum()) !== rawSha256) {
        bad = true
        say('rdk qcow2: the disk differs from the raw image!')
      }
      await discard()
      rows.push({net, dd, r1, r2, r1Rss, r2Rss})
      say(`round ${round}: net ${fmt(net)} s, dd ${fmt(dd)} s, rdk raw ${fmt(r1)} s (${fmt(r1Rss, 1)} MB), rdk qcow2 ${fmt(r2)} s (${fmt(r2Rss, 1)} MB)`)
    }
  } catch (err) {
    console.error(`ERROR: ${err.message}`)
    if (vm) console.error(`--- serial (tail) ---\n${vm.serialLog().split('\n').slice(-30).join('\n')}`)
    process.exitCode = 1
  } finally {
    await vm?.stop()
    server.close()
  }
  if (!rows.length) return
  const best = (k) => Math.min(...rows.map((r) => r[k]))
  const v = VSIZE_MIB
  const dd = best('dd')
  const mbps = (s) => (v * MIB) / 1e6 / s
  console.log(`\nVM: ${MEMORY_MIB} MiB RAM, 1 vCPU (${vm.accel}); image: ${v} MiB virtual (${fmt(v / MEMORY_MIB, 1)}x RAM), ${fmt(qMib, 0)} MiB qcow2`)
  console.log(`image checksum: ${ALGO}; best of ${rows.length} rounds, throughput over the virtual size (goal: rdk >= ${GOAL.ratio * 100} % of dd)`)
  console.log(`${'network'.padEnd(10)} ${fmt(best('net')).padStart(7)} s  ${fmt(mbps(best('net')), 1).padStart(6)} MB/s  (wget -O /dev/null of the raw image)`)
  console.log(`${'dd'.padEnd(10)} ${fmt(dd).padStart(7)} s  ${fmt(mbps(dd), 1).padStart(6)} MB/s`)
  const missed = []
  for (const [name, k, rk] of [
    ['rdk raw', 'r1', 'r1Rss'],
    ['rdk qcow2', 'r2', 'r2Rss'],
  ]) {
    const s = best(k)
    const ratio = dd / s
    console.log(
      `${name.padEnd(10)} ${fmt(s).padStart(7)} s  ${fmt(mbps(s), 1).padStart(6)} MB/s  ${fmt(ratio * 100, 0).padStart(4)} % of dd  agent peak RSS ${fmt(Math.max(...rows.map((r) => r[rk])), 1)} MB`,
    )
    if (ratio < GOAL.ratio) missed.push(`${name} throughput`)
  }
  console.log(missed.length ? `goals missed: ${missed.join(', ')}` : 'all goals met')
  if (bad) {
    console.error('ERROR: a written disk differs from the raw image')
    process.exitCode = 1
  }
}

await main()
