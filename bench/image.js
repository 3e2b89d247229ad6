#!/usr/bin/env node
// Image-writing benchmark: `npm run bench:image` (builds first). Everything stays on this machine:
// a loopback HTTP server serves the images, the targets are sparse files in a temp directory.
//
// The image: a random raw disk of VSIZE_MIB (2.5 GiB virtual) holding DATA_MIB of random data in
// 64 MiB stripes, the rest holes; its qcow2 made by qemu-img. Printed, next to the goals:
//   - dd:         `dd if=disk.raw of=target bs=4M conv=notrunc,fsync` (no network, no checksum)
//   - rdk raw:    the raw image over HTTP, sha256 checked on the fly, streamed to the target
//   - rdk qcow2:  the qcow2 over HTTP, converted while streaming (never stored)
// with wall time, throughput over the virtual size, the ratio to dd (goal: >= 90 %), and the
// peak RSS of the writing process (goal: < 100 MB; a child process per run, VmHWM).
// A missed goal is reported, not fatal; a wrong result (content differs from the raw disk) exits 1.
// Best of 3 rounds, dd and rdk interleaved: on a shared 2-core machine single runs vary by 2-3x.
import {spawn} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {createReadStream, mkdtempSync, openSync, closeSync, writeSync, ftruncateSync, rmSync, statSync} from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {execFileSync} from 'node:child_process'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const MIB = 1024 * 1024
const VSIZE_MIB = Number(process.env.BENCH_VSIZE_MIB ?? 2560)
const DATA_MIB = Number(process.env.BENCH_DATA_MIB ?? 1024)
const GOAL = {ratio: 0.9, rssMb: 100}

const dir = mkdtempSync(path.join(os.tmpdir(), 'rdk-bench-image-'))
const raw = path.join(dir, 'disk.raw')
const qcow2 = path.join(dir, 'disk.qcow2')

function sha256(file, length) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256')
    createReadStream(file, {start: 0, end: length - 1})
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject)
  })
}

function makeImage() {
  const fd = openSync(raw, 'w')
  ftruncateSync(fd, VSIZE_MIB * MIB)
  const stripe = 64
  const stripes = Math.ceil(DATA_MIB / stripe)
  const gap = Math.floor((VSIZE_MIB - DATA_MIB) / stripes)
  let pos = 0
  for (let s = 0; s < stripes; s++) {
    for (let i = 0; i < stripe; i++) writeSync(fd, randomBytes(MIB), 0, MIB, (pos + i) * MIB)
    pos += stripe + gap
  }
  closeSync(fd)
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2])
}

function freshTarget(name) {
  const f = path.join(dir, name)
  const fd = openSync(f, 'w')
  ftruncateSync(fd, VSIZE_MIB * MIB)
  closeSync(fd)
  return f
}

function serve() {
  const files = {'/disk.raw': raw, '/disk.qcow2': qcow2}
  const server = http.createServer((req, res) => {
    const f = files[req.url]
    if (!f) {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, {'Content-Length': statSync(f).size})
    createReadStream(f, {highWaterMark: MIB}).pipe(res)
  })
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r(server)))
}

const dropCaches = () => {
  try {
    execFileSync('sync')
  } catch {}
}

/** One rdk write in a child process (so its peak RSS is its own); returns {seconds, rssMb, method}. */
function rdkWrite(url, sum, target) {
  const script = `
    import {ImageDownload} from ${JSON.stringify(path.join(ROOT, 'dist/agent/image/download.js'))}
    import {Target} from ${JSON.stringify(path.join(ROOT, 'dist/agent/image/target.js'))}
    import {writeImage} from ${JSON.stringify(path.join(ROOT, 'dist/agent/image/stream.js'))}
    const quiet = {debug() {}, info() {}, warn() {}, error() {}, child: () => quiet}
    const info = {id: 'bench', urls: [${JSON.stringify(url)}], os_hash_algo: 'sha256', os_hash_value: ${JSON.stringify(sum)}}
    const settings = {connectionTimeout: 60, retries: 0, retryInterval: 1, maxDuration: 0, log: quiet}
    const t0 = performance.now()
    const dl = await ImageDownload.open(info, settings)
    const target = await Target.open(${JSON.stringify(target)})
    const r = await writeImage(dl, target, null, {permitted: ['raw', 'gpt', 'qcow2'], reopen: () => ImageDownload.open(info, settings), log: quiet})
    await target.sync()
    await target.close()
    const seconds = (performance.now() - t0) / 1000
    const hwm = /VmHWM:\\s+(\\d+) kB/.exec(await (await import('node:fs/promises')).readFile('/proc/self/status', 'utf8'))
    console.log(JSON.stringify({seconds, rssMb: Number(hwm[1]) / 1024, method: r.method, written: r.bytesWritten}))
  `
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {stdio: ['ignore', 'pipe', 'inherit']})
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1))) : reject(new Error(`rdk writer exited with ${code}`))))
  })
}

function ddWrite(target) {
  const t0 = performance.now()
  execFileSync('dd', [`if=${raw}`, `of=${target}`, 'bs=4M', 'conv=notrunc,fsync', 'status=none'])
  return {seconds: (performance.now() - t0) / 1000}
}

const fmt = (x, d = 2) => x.toFixed(d)

async function main() {
  process.on('exit', () => rmSync(dir, {recursive: true, force: true}))
  console.log(`image: ${VSIZE_MIB} MiB virtual, ${DATA_MIB} MiB of random data; building with qemu-img…`)
  makeImage()
  const rawSum = await sha256(raw, VSIZE_MIB * MIB)
  const qSize = statSync(qcow2).size
  const qSum = await sha256(qcow2, qSize)
  console.log(`qcow2 file: ${fmt(qSize / MIB, 0)} MiB`)
  const server = await serve()
  const base = `http://127.0.0.1:${server.address().port}`
  const rows = []
  let bad = false
  try {
    // Warm the page cache for all readers alike.
    await sha256(raw, VSIZE_MIB * MIB)
    for (const round of [1, 2, 3]) {
      const tDd = freshTarget(`dd-${round}`)
      dropCaches()
      const dd = ddWrite(tDd)
      rmSync(tDd)
      const tRaw = freshTarget(`raw-${round}`)
      dropCaches()
      const r1 = await rdkWrite(`${base}/disk.raw`, rawSum, tRaw)
      if ((await sha256(tRaw, VSIZE_MIB * MIB)) !== rawSum) bad = true
      rmSync(tRaw)
      const tQ = freshTarget(`q-${round}`)
      dropCaches()
      const r2 = await rdkWrite(`${base}/disk.qcow2`, qSum, tQ)
      if ((await sha256(tQ, VSIZE_MIB * MIB)) !== rawSum) bad = true
      rmSync(tQ)
      rows.push({dd, r1, r2})
    }
  } finally {
    server.close()
    rmSync(dir, {recursive: true, force: true})
  }
  const best = (k) => rows.map((r) => r[k]).sort((a, b) => a.seconds - b.seconds)[0]
  const dd = best('dd')
  const r1 = best('r1')
  const r2 = best('r2')
  const v = VSIZE_MIB
  const line = (name, r, extra = '') => {
    const ratio = dd.seconds / r.seconds
    console.log(
      `${name.padEnd(10)} ${fmt(r.seconds).padStart(7)} s  ${fmt(v / r.seconds, 0).padStart(6)} MiB/s  ${fmt(ratio * 100, 0).padStart(4)} % of dd  ${extra}`,
    )
    return ratio
  }
  console.log(`\nbest of ${rows.length} rounds (throughput over the ${v} MiB virtual size; goal: >= ${GOAL.ratio * 100} % of dd, peak RSS < ${GOAL.rssMb} MB)`)
  console.log(`${'dd'.padEnd(10)} ${fmt(dd.seconds).padStart(7)} s  ${fmt(v / dd.seconds, 0).padStart(6)} MiB/s`)
  const a = line('rdk raw', r1, `peak RSS ${fmt(r1.rssMb, 1)} MB`)
  const b = line('rdk qcow2', r2, `peak RSS ${fmt(r2.rssMb, 1)} MB (${r2.method})`)
  const missed = []
  if (a < GOAL.ratio) missed.push('raw throughput')
  if (b < GOAL.ratio) missed.push('qcow2 throughput')
  if (Math.max(r1.rssMb, r2.rssMb) >= GOAL.rssMb) missed.push('peak RSS')
  console.log(missed.length ? `goals missed: ${missed.join(', ')}` : 'all goals met')
  if (bad) {
    console.error('ERROR: a written target differs from the raw disk')
    process.exit(1)
  }
}

await main()
