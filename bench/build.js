#!/usr/bin/env node
// Build/boot benchmark of the tiny deploy ramdisk: `npm run bench:build` (builds rdk first).
// Prints, next to issue 3's goals and the peers' published figures:
//   - kernel and initramfs sizes (goal: both together ≤ 40 MB, MB = 10^6 bytes) and the largest
//     contributors from the build's per-source size report;
//   - cold build time (`rdk build` with an empty, bench-owned --cache-dir: every package is
//     downloaded from the mirror and verified), a full build from that warm cache into a fresh
//     output dir, and the rebuild after touching one file of a user element (goal ≤ 10 s), with a
//     check that only the initramfs was redone;
//   - the smallest qemu RAM (32 MiB steps, bisected) in which the image boots and the agent's first
//     heartbeat arrives (goal ≤ 384 MiB), and the RAM sizes that failed and how;
//   - boot → first heartbeat at 1024 MiB and at that minimum, next to a bare busybox initramfs on
//     the same kernel, same qemu options, same run; and boot → the agent answering /v1/status.
// Heartbeats go to a small Ironic stub on 127.0.0.1 (bench/lib/ironic-stub.js), which the guest
// reaches as 10.0.2.2; the test suite uses a real Ironic. Under TCG every boot takes 20–40 s.
//
// Options: --quick (no cold build: a persistent bench cache in node_modules/.cache/rdk-bench, and
// 64 MiB bisection steps), --json (the figures as JSON on stdout too), --keep (keep the work dir).
// A missed goal is reported, not fatal; a build that fails or an image that does not heartbeat at
// 1024 MiB exits non-zero.
import {randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {rmSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {run} from '../dist/common/exec.js'
import {buildBusyboxInitramfs} from './lib/busybox-image.js'
import {startIronicStub} from './lib/ironic-stub.js'
import {benchBoot} from './lib/vm-boot.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const RUN_JS = path.join(ROOT, 'bin', 'run.js')
const QUICK_CACHE = path.join(ROOT, 'node_modules', '.cache', 'rdk-bench')
const BUILD_TIMEOUT_MS = 30 * 60_000
const BOOT_TIMEOUT_MS = 120_000
const FIXED_RAM = 1024
const RAM_FLOOR = 128

const GOAL = {sizeMB: 40, ramMiB: 384, rebuildS: 10}
const MB = 1e6
const MiB = 2 ** 20
/**
 * The peers' published figures: DIB's CentOS Stream 9 IPA ramdisk (2023.1; `ls` in
 * osism/testbed#1801; RAM "at least 1.5GB" per the element's README) and TinyIPA (ironic's
 * oci-container-registry doc; its CI VMs get 1024 MB).
 */
const PEERS = [
  {name: 'DIB CentOS IPA ramdisk', kernel: 13_378_216, initramfs: 438_446_711, ram: '≥ 1.5 GB (README)'},
  {name: 'TinyIPA', kernel: 5.65 * MB, initramfs: 91.9 * MB, ram: '1024 MB (CI VMs)'},
]

const argv = process.argv.slice(2)
const opts = {quick: argv.includes('--quick'), json: argv.includes('--json'), keep: argv.includes('--keep')}
for (const a of argv) {
  if (!['--quick', '--json', '--keep'].includes(a)) {
    console.error(`bench: unknown option ${a} (use --quick, --json, --keep)`)
    process.exit(2)
  }
}

const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b)
  if (!s.length) return NaN
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const log = (msg) => console.error(`bench: ${msg}`)
const fmt = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : 'n/a')
const sec = (ms) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(1)} s` : 'n/a')
const mb = (bytes) => `${fmt(bytes / MB, 1)} MB (${fmt(bytes / MiB, 1)} MiB)`

function table(header, rows) {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => String(r[c]).length)))
  const line = (cells) => cells.map((x, c) => (c === 0 ? String(x).padEnd(widths[c]) : String(x).padStart(widths[c]))).join('   ')
  console.log(line(header))
  console.log(widths.map((w) => '-'.repeat(w)).join('   '))
  for (const r of rows) console.log(line(r))
}

/** `rdk build --json …`; wall time measured here (process start to exit), result parsed. */
async function rdkBuild(label, args) {
  log(`${label}: rdk build ${args.join(' ')}`)
  const t0 = performance.now()
  let r
  try {
    r = await run(process.execPath, [RUN_JS, 'build', '--json', ...args], {cwd: ROOT, timeoutMs: BUILD_TIMEOUT_MS})
  } catch (err) {
    throw new Error(`${label}: rdk build failed: ${err.message}`)
  }
  const ms = performance.now() - t0
  let result
  try {
    result = JSON.parse(r.stdout)
  } catch {
    throw new Error(`${label}: rdk build --json printed no JSON: ${r.stdout.slice(0, 500)}`)
  }
  const art = (kind) => result.artefacts.find((a) => a.kind === kind)
  if (!art('kernel') || !art('initramfs')) throw new Error(`${label}: the build produced no kernel/initramfs artefact`)
  const manifestArt = art('manifest')
  const manifest = manifestArt ? JSON.parse(await readFile(manifestArt.path, 'utf8')) : undefined
  log(`${label}: ${sec(ms)}`)
  return {label, ms, result, manifest, kernel: art('kernel'), initramfs: art('initramfs')}
}

/**
 * namespace/entry names under the cache dir (bookkeeping left out). Namespaces starting with
 * `initramfs` belong to the pack-initramfs stage (the whole image, or its layers).
 */
async function cacheEntries(dir) {
  const out = new Set()
  for (const ns of await readdir(dir).catch(() => [])) {
    if (ns === 'index.json' || ns.startsWith('tmp-') || ns.startsWith('.')) continue
    const sub = await readdir(path.join(dir, ns)).catch(() => undefined)
    if (!sub) out.add(ns)
    else for (const e of sub) if (!e.startsWith('tmp-') && !e.startsWith('.')) out.add(`${ns}/${e}`)
  }
  return out
}

const stageMs = (b, name) => b.result.stages.find((s) => s.name === name)?.ms
const stageNote = (b, name) => b.result.stages.find((s) => s.name === name)?.note ?? ''

async function main() {
  const figures = {
    date: new Date().toISOString(),
    machine: {cpus: os.cpus().length, memGiB: +(os.totalmem() / 2 ** 30).toFixed(1), node: process.version, loadStart: +os.loadavg()[0].toFixed(2)},
    quick: opts.quick,
  }
  const work = await mkdtemp(path.join(os.tmpdir(), 'rdk-bench-build-'))
  const cleanup = () => {
    if (!opts.keep) rmSync(work, {recursive: true, force: true})
  }
  process.once('SIGINT', () => {
    cleanup()
    process.exit(130)
  })
  let stub
  try {
    console.log(
      `rdk build/boot benchmark — node ${process.version}, ${os.platform()} ${os.arch()}, ${os.cpus().length} CPU(s), ${fmt(os.totalmem() / 2 ** 30)} GiB RAM${opts.quick ? ' (--quick)' : ''}`,
    )
    console.log(`work dir ${work}; this takes ${opts.quick ? '~5' : '10–15'} minutes (each qemu boot 20–40 s under TCG)\n`)

    // --- builds --------------------------------------------------------------------------------
    const cacheDir = opts.quick ? QUICK_CACHE : path.join(work, 'cache')
    await mkdir(cacheDir, {recursive: true})
    const cacheWasEmpty = (await readdir(cacheDir)).length === 0
    const cachedLabel = opts.quick ? `full build, persistent quick cache${cacheWasEmpty ? ' (empty: downloads)' : ''}` : 'full build from the warm cache'
    let cold
    if (!opts.quick) cold = await rdkBuild('cold build (empty cache)', ['--output', path.join(work, 'out-cold'), '--cache-dir', cacheDir])
    const cached = await rdkBuild(cachedLabel, ['--output', path.join(work, 'out-cached'), '--cache-dir', cacheDir])
    if (cold && cold.initramfs.sha256 !== cached.initramfs.sha256) log('note: the cached build gave a different initramfs than the cold one')

    // A user element with one file; build once, change the file, build again (timed).
    const elDir = path.join(work, 'elements', 'bench-touch')
    await mkdir(elDir, {recursive: true})
    await writeFile(
      path.join(elDir, 'element.yaml'),
      'description: bench-touch, a one-file element the build benchmark edits between two builds.\nfiles:\n  /etc/rdk-bench/stamp: stamp.txt\n',
    )
    const stamp = path.join(elDir, 'stamp.txt')
    const elArgs = ['--elements-path', path.join(work, 'elements'), '--element', 'bench-touch', '--cache-dir', cacheDir]
    await writeFile(stamp, `bench ${randomBytes(8).toString('hex')} 1\n`)
    const packBefore = await cacheEntries(cacheDir)
    const touch1 = await rdkBuild('build with the user element', ['--output', path.join(work, 'out-touch1'), ...elArgs])
    const entriesBefore = await cacheEntries(cacheDir)
    await writeFile(stamp, `bench ${randomBytes(8).toString('hex')} 2\n`)
    const touch2 = await rdkBuild('rebuild after touching the element', ['--output', path.join(work, 'out-touch2'), ...elArgs])
    const entriesAfter = await cacheEntries(cacheDir)
    const added = [...entriesAfter].filter((e) => !entriesBefore.has(e))
    const isPack = (e) => e.startsWith('initramfs')
    const rebuild = {
      ms: touch2.ms,
      buildMs: touch2.result.durationMs,
      initramfsChanged: touch1.initramfs.sha256 !== touch2.initramfs.sha256,
      kernelSame: touch1.kernel.sha256 === touch2.kernel.sha256,
      cache: touch2.result.cache,
      packEntries: added.filter(isPack),
      otherEntries: added.filter((e) => !isPack(e)),
      packNote: stageNote(touch2, 'pack-initramfs'),
      stages: touch2.result.stages.map((s) => ({name: s.name, ms: s.ms})),
    }
    rebuild.reusedOthers = rebuild.otherEntries.length === 0
    if (opts.quick) {
      // The persistent quick cache keeps nothing of the throw-away element builds.
      for (const e of [...entriesAfter].filter((x) => isPack(x) && !packBefore.has(x))) await rm(path.join(cacheDir, e), {recursive: true, force: true})
    }

    const compress = cached.manifest?.spec?.compress ?? 'gzip'
    const kernelPath = cached.kernel.path
    const initrdPath = cached.initramfs.path
    const sizes = {kernel: cached.kernel.size, initramfs: cached.initramfs.size}
    sizes.total = sizes.kernel + sizes.initramfs
    const treeBytes = cached.manifest?.tree?.bytes
    const kernelVersion = cached.manifest?.kernel?.version
    figures.image = {compress, kernelVersion, treeBytes, ...sizes, mirror: cached.manifest?.spec?.debianMirror}
    figures.builds = {
      coldMs: cold?.ms,
      coldStages: cold?.result.stages.map((s) => ({name: s.name, ms: s.ms})),
      cachedMs: cached.ms,
      cachedFromEmptyCache: opts.quick && cacheWasEmpty,
      rebuild,
    }

    // --- boots ---------------------------------------------------------------------------------
    stub = await startIronicStub()
    log(`Ironic stub on 127.0.0.1:${stub.port} (guest: ${stub.guestUrl})`)
    log('packing the busybox baseline')
    const bb = await buildBusyboxInitramfs({cacheDir, workDir: work, compress, kernelVersion})
    figures.busyboxImage = {size: bb.size, rawBytes: bb.rawBytes, busybox: bb.busyboxVersion, modules: bb.modules}
    const agentMarks = {
      init: /rdk-init: started/,
      network: /rdk-init: network: eth0 \d+\.\d+\.\d+\.\d+/,
      agentStart: /rdk-init: agent: starting/,
    }
    // The image's boot artefacts carry the flavor's arguments (root=/dev/ram0: ramfs, not a tmpfs
    // capped at half the RAM); the bench boots with them, as the ISO/PXE/iPXE configs do.
    const bootArgs = cached.manifest?.kernelCmdline ?? ''
    figures.bootArgs = bootArgs
    const boot = (kind, memoryMiB, extra = {}) => {
      log(`boot ${kind} with ${memoryMiB} MiB`)
      return benchBoot({
        kind,
        memoryMiB,
        kernel: kernelPath,
        initrd: kind === 'agent' ? initrdPath : bb.path,
        stub,
        workDir: work,
        cacheDir,
        timeoutMs: BOOT_TIMEOUT_MS,
        marks: kind === 'agent' ? agentMarks : {init: /bench-init: started/, network: /bench-init: network up/},
        bootArgs,
        ...extra,
      }).then((r) => {
        log(`  → ${r.ok ? `first heartbeat after ${sec(r.heartbeatMs)}` : `FAILED: ${r.failure}`}`)
        return r
      })
    }

    // At the fixed RAM, alternate the image and the baseline (TCG timings swing ±30 %).
    const samples = opts.quick ? 1 : 2
    const agentRuns = []
    const busyboxRuns = []
    for (let i = 0; i < samples; i++) {
      const a = await boot('agent', FIXED_RAM, {probeStatus: true})
      if (!a.ok) {
        console.error(`bench: the image did not heartbeat with ${FIXED_RAM} MiB: ${a.failure}\n--- serial (last lines) ---\n${a.serialTail}`)
        return 1
      }
      agentRuns.push(a)
      const b = await boot('busybox', FIXED_RAM)
      if (!b.ok) log(`the busybox baseline did not answer: ${b.failure}\n${b.serialTail}`)
      busyboxRuns.push(b)
    }
    const agentFixed = agentRuns[0]
    const busyboxFixed = busyboxRuns[0]

    // Smallest RAM: bisect between a presumed failure below the floor and the known good 1024 MiB.
    const step = opts.quick ? 64 : 32
    let good = FIXED_RAM
    let bad = RAM_FLOOR - step
    const tries = [agentFixed]
    let atMin = agentFixed
    while (good - bad > step) {
      const mid = bad + Math.max(1, Math.round((good - bad) / step / 2)) * step
      const r = await boot('agent', mid)
      tries.push(r)
      if (r.ok) {
        good = mid
        atMin = r
      } else {
        bad = mid
      }
    }
    const busyboxMin = atMin.memoryMiB !== FIXED_RAM ? await boot('busybox', atMin.memoryMiB) : busyboxFixed
    figures.ram = {
      minMiB: good,
      stepMiB: step,
      belowFloor: bad < RAM_FLOOR,
      tried: tries.map((t) => ({memoryMiB: t.memoryMiB, ok: t.ok, heartbeatMs: t.heartbeatMs, failure: t.failure})),
    }
    const boots = {
      fixedMiB: FIXED_RAM,
      agent: agentRuns.map(pick),
      busybox: busyboxRuns.map(pick),
      agentAtMin: pick(atMin),
      busyboxAtMin: pick(busyboxMin),
      qemu: agentFixed.argv.join(' '),
    }
    figures.boots = boots

    // --- report --------------------------------------------------------------------------------
    console.log('')
    console.log(
      `image: ${compress} initramfs, kernel ${kernelVersion ?? '?'}; tree ${treeBytes ? mb(treeBytes) : 'n/a'} uncompressed; mirror ${figures.image.mirror ?? '?'}`,
    )
    console.log('')
    table(
      ['size', 'kernel', 'initramfs', 'total', 'goal', 'result'],
      [
        ['rdk tiny', mb(sizes.kernel), mb(sizes.initramfs), mb(sizes.total), `≤ ${GOAL.sizeMB} MB`, sizes.total <= GOAL.sizeMB * MB ? 'PASS' : 'MISS'],
        ...PEERS.map((p) => [
          p.name,
          mb(p.kernel),
          mb(p.initramfs),
          mb(p.kernel + p.initramfs),
          `rdk ${fmt((sizes.total / (p.kernel + p.initramfs)) * 100, 0)} %`,
          '',
        ]),
      ],
    )
    console.log('')
    const top = [...(cached.result.sizes ?? [])].sort((a, b) => b.bytes - a.bytes).slice(0, 10)
    console.log(
      `largest contributors (uncompressed, of ${treeBytes ? mb(treeBytes) : '?'}): ${top.map((s) => `${s.source} ${fmt(s.bytes / MB, 1)} MB`).join(', ')}`,
    )
    figures.image.top = top.map((s) => ({source: s.source, bytes: s.bytes}))
    console.log('')

    const rb = rebuild
    table(
      ['build', 'time', 'goal', 'result', 'notes'],
      [
        [
          'cold (empty cache)',
          cold ? sec(cold.ms) : 'skipped',
          '',
          '',
          cold
            ? `packages ${sec(stageMs(cold, 'fetch-packages'))}, kernel ${sec(stageMs(cold, 'fetch-kernel'))}, pack ${sec(stageMs(cold, 'pack-initramfs'))}`
            : '--quick',
        ],
        [
          opts.quick ? `full, quick cache${cacheWasEmpty ? ' (was empty)' : ''}` : 'full, warm cache, fresh output',
          sec(cached.ms),
          '',
          '',
          `packages ${sec(stageMs(cached, 'fetch-packages'))}, kernel ${sec(stageMs(cached, 'fetch-kernel'))}, pack ${sec(stageMs(cached, 'pack-initramfs'))}`,
        ],
        [
          'rebuild after touching one element',
          sec(rb.ms),
          `≤ ${GOAL.rebuildS} s`,
          rb.ms <= GOAL.rebuildS * 1000 ? 'PASS' : 'MISS',
          `packages ${sec(stageMs(touch2, 'fetch-packages'))}, kernel ${sec(stageMs(touch2, 'fetch-kernel'))}, node ${sec(stageMs(touch2, 'add-agent'))}, pack ${sec(stageMs(touch2, 'pack-initramfs'))}`,
        ],
      ],
    )
    if (cold) console.log(`cold: ${stageNote(cold, 'fetch-packages')}; ${stageNote(cold, 'fetch-kernel')}; pack: ${stageNote(cold, 'pack-initramfs')}`)
    console.log(`cached full build, pack: ${stageNote(cached, 'pack-initramfs')}`)
    console.log(`rebuild, pack: ${rb.packNote}`)
    console.log(
      `rebuild check: initramfs ${rb.initramfsChanged ? 'changed' : 'UNCHANGED (!)'}, kernel ${rb.kernelSame ? 'same' : 'changed (!)'}, ` +
        `pack-initramfs produced ${rb.packEntries.length} new cache entr${rb.packEntries.length === 1 ? 'y' : 'ies'} (${rb.packEntries.map((e) => e.split('/')[0]).join(', ') || 'none'}), ` +
        `every other stage ${rb.reusedOthers ? 'reused the cache (no new entries)' : `did NOT: new ${rb.otherEntries.join(', ')}`}; ` +
        `--json cache: ${rb.cache?.hits ?? '?'} hit(s), ${rb.cache?.misses ?? '?'} miss(es); rdk's own duration ${sec(rb.buildMs)} (+ process start)`,
    )
    console.log('')

    const failedRam = figures.ram.tried.filter((t) => !t.ok)
    table(
      ['RAM', 'rdk', 'goal', 'result', ...PEERS.map((p) => p.name)],
      [
        [
          `smallest -m that boots and heartbeats (${step} MiB steps)`,
          `${good} MiB${figures.ram.belowFloor && good === RAM_FLOOR ? ' (the floor tried)' : ''}`,
          `≤ ${GOAL.ramMiB} MiB`,
          good <= GOAL.ramMiB ? 'PASS' : 'MISS',
          ...PEERS.map((p) => p.ram),
        ],
      ],
    )
    console.log(`tried: ${figures.ram.tried.map((t) => `${t.memoryMiB} MiB ${t.ok ? `ok (${sec(t.heartbeatMs)})` : `failed (${t.failure})`}`).join('; ')}`)
    if (!failedRam.length) console.log(`no size failed: ${RAM_FLOOR} MiB is the lowest tried`)
    console.log('')

    const hbAgent = median(agentRuns.map((r) => r.heartbeatMs))
    const hbBusybox = median(busyboxRuns.filter((r) => r.ok).map((r) => r.heartbeatMs))
    const statusMs = median(agentRuns.map((r) => r.statusMs).filter(Number.isFinite))
    const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) ? fmt(a / b, 2) : 'n/a')
    const samplesText = (runs) => (runs.length > 1 ? ` (${runs.map((r) => sec(r.heartbeatMs)).join(', ')})` : '')
    table(
      ['qemu start → first heartbeat', 'rdk tiny', 'busybox baseline', 'rdk/busybox', 'rdk /init → network → agent start'],
      [
        [
          `${FIXED_RAM} MiB${samples > 1 ? `, median of ${samples}` : ''}`,
          sec(hbAgent) + samplesText(agentRuns),
          sec(hbBusybox) + samplesText(busyboxRuns),
          ratio(hbAgent, hbBusybox),
          marksText(agentFixed),
        ],
        [
          `${atMin.memoryMiB} MiB (smallest)`,
          sec(atMin.heartbeatMs),
          sec(busyboxMin.heartbeatMs),
          ratio(atMin.heartbeatMs, busyboxMin.ok ? busyboxMin.heartbeatMs : NaN),
          marksText(atMin),
        ],
      ],
    )
    console.log(
      `qemu start → agent answers /v1/status (${agentFixed.callbackUrl?.startsWith('https') ? 'https, auto-TLS' : 'http'}, ${FIXED_RAM} MiB): ${sec(statusMs)}; first lookup ${sec(median(agentRuns.map((r) => r.lookupMs)))}`,
    )
    console.log(
      `busybox baseline: ${fmt(bb.size / MB, 2)} MB ${compress} (${fmt(bb.rawBytes / MB, 2)} MB cpio): busybox-static ${bb.busyboxVersion} + ${bb.modules.join(', ')}; its /init: ${marksText(busyboxFixed)}`,
    )
    console.log(`qemu: ${agentFixed.argv.slice(1).join(' ')}`)

    figures.machine.loadEnd = +os.loadavg()[0].toFixed(2)
    console.log(
      `load average (1 min) at start ${figures.machine.loadStart}, at end ${figures.machine.loadEnd}: other work on the ${os.cpus().length} cores slows TCG boots`,
    )
    const missed = [sizes.total <= GOAL.sizeMB * MB, rb.ms <= GOAL.rebuildS * 1000, good <= GOAL.ramMiB].filter((x) => !x).length
    console.log(missed ? `\n${missed} goal(s) missed` : '\nall goals met')
    figures.goals = {sizeMB: GOAL.sizeMB, ramMiB: GOAL.ramMiB, rebuildS: GOAL.rebuildS, missed}
    if (!rb.initramfsChanged || !rb.kernelSame) {
      console.error('bench: the rebuild after touching an element did not behave as a rebuild should (see "rebuild check")')
      if (opts.json) console.log(JSON.stringify(figures, null, 2))
      return 1
    }
    if (opts.json) console.log(JSON.stringify(figures, null, 2))
    return 0
  } finally {
    await stub?.close()
    cleanup()
    if (opts.keep) log(`kept ${work}`)
  }
}

function pick(r) {
  return {memoryMiB: r.memoryMiB, ok: r.ok, heartbeatMs: r.heartbeatMs, lookupMs: r.lookupMs, statusMs: r.statusMs, marks: r.marks, failure: r.failure}
}

function marksText(r) {
  const m = Object.entries(r.marks ?? {}).sort((a, b) => a[1] - b[1])
  return m.length ? `${m.map(([k, v]) => `${k} ${(v / 1000).toFixed(1)}`).join(', ')} s` : 'n/a'
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`bench: ${err.stack ?? err}`)
    process.exit(1)
  },
)
