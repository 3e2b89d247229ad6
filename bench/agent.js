#!/usr/bin/env node
// Agent benchmark: `npm run bench:agent` (builds first). Runs dist/agent.mjs standalone on
// 127.0.0.1 (an allow-list naming no real device keeps it away from this machine's disks) and
// prints, next to the real IPA 9.4.3 measured on this machine kind and rdk's goals:
//   - idle RSS of the agent ~3 s after it listens (VmRSS from /proc/<pid>/status; median of the runs)
//   - start → listening: spawn until the "agent API listening" log line (median of 5 runs)
//   - poll.get_hardware_info: request latency (median of 5 calls on one agent)
// and the size of dist/agent.mjs. A missed goal is reported, not fatal; an agent that does not
// start (or a failing command) exits non-zero.
//
// --disk-wait-attempts 1: the allow-list names no disk, so the generic manager would otherwise
// sleep 9 × 3 s waiting for a root device (as IPA does); one look without waiting is what a
// machine whose disk is found at once costs.
import {spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {readFileSync, statSync} from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {gzipSync} from 'node:zlib'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BUNDLE = path.join(ROOT, 'dist', 'agent.mjs')
const RUNS = 5
const HW_CALLS = 5
const IDLE_MS = 3000
const START_TIMEOUT_MS = 60_000

const IPA = {rssMb: 82.5, startS: 5.3, hwS: 2.1}
const GOAL = {rssMb: 50, startS: 2.5, hwS: 0.5}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function rssMb(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(m[1]) / 1024
}

/** Start the agent; resolves when it listens. Rejects (after killing it) if it does not. */
function startAgent(token) {
  const args = [
    BUNDLE,
    '--standalone',
    `--agent-token=${token}`, // '=' form: a base64url token may start with '-'
    '--listen-host',
    '127.0.0.1',
    '--listen-port',
    '0',
    '--cmdline',
    '',
    '--device-allowlist',
    '/dev/nonexistent-test-device',
    '--disk-wait-attempts',
    '1',
  ]
  const t0 = performance.now()
  const child = spawn(process.execPath, args, {cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe']})
  let log = ''
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({code, signal})))
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM') // our own child, by its PID
    const t = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(t)
  }
  return new Promise((resolve, reject) => {
    let pending = ''
    let done = false
    const fail = async (why) => {
      if (done) return
      done = true
      clearTimeout(timer)
      await stop()
      reject(new Error(`${why}\n--- agent log tail ---\n${log.trimEnd().split('\n').slice(-30).join('\n')}`))
    }
    const timer = setTimeout(() => void fail(`the agent did not listen within ${START_TIMEOUT_MS / 1000} s`), START_TIMEOUT_MS)
    child.once('error', (err) => void fail(`could not start the agent: ${err.message}`))
    void exited.then((st) => fail(`the agent exited before listening (${JSON.stringify(st)})`))
    child.stderr.on('data', (chunk) => {
      const text = chunk.toString('utf8')
      log += text
      if (log.length > 1_000_000) log = log.slice(-500_000)
      if (done) return
      pending += text
      let nl
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl)
        pending = pending.slice(nl + 1)
        if (!line.includes('agent API listening')) continue
        try {
          const rec = JSON.parse(line)
          if (rec.msg === 'agent API listening' && typeof rec.port === 'number') {
            done = true
            clearTimeout(timer)
            resolve({pid: child.pid, port: rec.port, startMs: performance.now() - t0, stop, logs: () => log})
            return
          }
        } catch {
          // not JSON
        }
      }
    })
  })
}

function post(port, pathAndQuery, body) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body))
    const t0 = performance.now()
    const req = http.request(
      {host: '127.0.0.1', port, method: 'POST', path: pathAndQuery, agent: false, headers: {'Content-Type': 'application/json', 'Content-Length': data.length}},
      (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () => resolve({status: res.statusCode, ms: performance.now() - t0, text: Buffer.concat(chunks).toString('utf8')}))
        res.on('error', reject)
      },
    )
    req.setTimeout(120_000, () => req.destroy(new Error('request timed out')))
    req.on('error', reject)
    req.end(data)
  })
}

const fmt = (n, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : 'n/a')

async function main() {
  let bundleSize
  try {
    bundleSize = statSync(BUNDLE).size
  } catch {
    console.error(`bench: ${BUNDLE} not found: run \`npm run build\` first`)
    return 1
  }
  const gzSize = gzipSync(readFileSync(BUNDLE), {level: 9}).length
  console.log(
    `rdk agent benchmark — node ${process.version}, ${os.platform()} ${os.arch()}, ${os.cpus().length} CPU(s), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM`,
  )
  console.log(`bundle dist/agent.mjs: ${(bundleSize / 1024).toFixed(1)} KiB (${(gzSize / 1024).toFixed(1)} KiB gzip -9)`)
  console.log(`runs: ${RUNS} starts, ${HW_CALLS} poll.get_hardware_info calls; please wait ~${Math.ceil((RUNS * (IDLE_MS + 1000)) / 1000) + 5} s\n`)

  const starts = []
  const rss = []
  const hw = []
  let rssAfterHw = NaN
  for (let i = 0; i < RUNS; i++) {
    const token = randomBytes(32).toString('base64url')
    let agent
    try {
      agent = await startAgent(token)
    } catch (err) {
      console.error(`bench: run ${i + 1}: ${err.message}`)
      return 1
    }
    try {
      starts.push(agent.startMs)
      await sleep(IDLE_MS)
      rss.push(rssMb(agent.pid))
      if (i === 0) {
        for (let j = 0; j < HW_CALLS; j++) {
          const res = await post(agent.port, `/v1/commands/?agent_token=${token}&wait=true`, {name: 'poll.get_hardware_info', params: {}})
          let body
          try {
            body = JSON.parse(res.text)
          } catch {
            body = undefined
          }
          if (res.status !== 200 || body?.command_status !== 'SUCCEEDED') {
            console.error(`bench: poll.get_hardware_info answered ${res.status}: ${res.text.slice(0, 500)}`)
            return 1
          }
          hw.push(res.ms)
        }
        rssAfterHw = rssMb(agent.pid)
      }
    } finally {
      await agent.stop()
    }
  }

  const rows = [
    {metric: 'idle RSS after start (MB)', rdk: median(rss), ipa: IPA.rssMb, goal: GOAL.rssMb, unit: 'MB', d: 1},
    {metric: `start → listening (s, median of ${RUNS})`, rdk: median(starts) / 1000, ipa: IPA.startS, goal: GOAL.startS, unit: 's', d: 2},
    {metric: `poll.get_hardware_info (s, median of ${HW_CALLS})`, rdk: median(hw) / 1000, ipa: IPA.hwS, goal: GOAL.hwS, unit: 's', d: 3},
  ]
  const header = ['metric', 'rdk', 'IPA 9.4.3', 'rdk/IPA', 'goal', 'result']
  const table = rows.map((r) => [r.metric, fmt(r.rdk, r.d), fmt(r.ipa, 1), fmt(r.rdk / r.ipa, 2), `≤ ${r.goal} ${r.unit}`, r.rdk <= r.goal ? 'PASS' : 'MISS'])
  const widths = header.map((h, c) => Math.max(h.length, ...table.map((row) => row[c].length)))
  const line = (cells) => cells.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('   ')
  console.log(line(header))
  console.log(widths.map((w) => '-'.repeat(w)).join('   '))
  for (const row of table) console.log(line(row))
  console.log('')
  console.log(
    `samples: idle RSS ${rss.map((x) => fmt(x, 1)).join(', ')} MB; start ${starts.map((x) => fmt(x / 1000, 2)).join(', ')} s; get_hardware_info ${hw.map((x) => fmt(x / 1000, 3)).join(', ')} s`,
  )
  console.log(`RSS after the ${HW_CALLS} inventories: ${fmt(rssAfterHw, 1)} MB (IPA's idle figure was taken after lookup, which collects the inventory)`)
  console.log(
    `start → listening + first inventory (≈ IPA's start→listening, which includes the lookup inventory): ${fmt((median(starts) + hw[0]) / 1000, 2)} s`,
  )
  const missed = rows.filter((r) => !(r.rdk <= r.goal)).length
  console.log(missed ? `${missed} goal(s) missed` : 'all goals met')
  return 0
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`bench: ${err.stack ?? err}`)
    process.exit(1)
  },
)
