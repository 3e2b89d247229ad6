// A stand-in for the part of Ironic's API a deploy ramdisk talks to, for timing boots only
// (bench/build.js). It answers with the shapes a real Ironic 21.4 (max API 1.82) sends — version
// discovery (GET /, GET /v1), GET /v1/lookup, POST /v1/heartbeat/<uuid> — and records when each
// request arrives. The test suite checks the agent against a real Ironic (test/helpers/ironic.ts);
// this stub exists so a benchmark boot costs no Ironic start-up and its timings are the guest's own.
//
// Listens on 127.0.0.1 only (the guest reaches it as 10.0.2.2 through qemu's user networking). It
// never connects anywhere: unlike Ironic it does not call the agent back.
import {randomBytes, randomUUID} from 'node:crypto'
import http from 'node:http'

export const MAX_VERSION = '1.82'
const MIN_VERSION = '1.1'
/** IPA and rdk send API versions up to these; Ironic answers 404 to a lookup below 1.22. */
const LOOKUP_MIN = [1, 22]

const parseVersion = (s) => {
  const m = /^(\d+)\.(\d+)$/.exec(String(s ?? '').trim())
  return m ? [Number(m[1]), Number(m[2])] : undefined
}
const cmp = (a, b) => a[0] - b[0] || a[1] - b[1]

/** Ironic's error body: {"error_message": "<JSON string with faultstring>"}. */
function errorBody(faultstring) {
  return JSON.stringify({error_message: JSON.stringify({faultstring, debuginfo: null})})
}

/**
 * Start the stub. `addNode({mac})` registers a machine (its lookup answers with a fresh node and
 * agent token); `addNode({baseline: true})` registers a bare busybox guest whose "heartbeat" is a
 * plain `wget` without token or version. `waitForHeartbeat(uuid, ms)` resolves with the arrival time
 * (ms since the epoch) of that node's first accepted heartbeat.
 */
export async function startIronicStub() {
  const nodes = new Map() // uuid → node
  const byMac = new Map() // lower-case MAC → node
  const requests = []
  let base = ''

  const versionDoc = () => ({
    id: 'v1',
    links: [{href: `${base}/v1/`, rel: 'self'}],
    status: 'CURRENT',
    min_version: MIN_VERSION,
    version: MAX_VERSION,
  })

  const notify = (node) => {
    for (const w of [...node.waiters]) w()
  }

  function handle(req, body) {
    const url = new URL(req.url, 'http://stub')
    const p = url.pathname.replace(/\/+$/, '') || '/'
    const asked = parseVersion(req.headers['x-openstack-ironic-api-version'])
    if (req.method === 'GET' && p === '/') {
      return [
        200,
        JSON.stringify({
          name: 'OpenStack Ironic API',
          description: 'Ironic is an OpenStack project which enables the provision and management of baremetal machines.',
          default_version: versionDoc(),
          versions: [versionDoc()],
        }),
      ]
    }
    if (req.method === 'GET' && p === '/v1') {
      return [
        200,
        JSON.stringify({...versionDoc(), media_types: [{base: 'application/json', type: 'application/vnd.openstack.ironic.v1+json'}], version: versionDoc()}),
      ]
    }
    if (req.method === 'GET' && p === '/v1/lookup') {
      if (!asked || cmp(asked, LOOKUP_MIN) < 0) return [404, errorBody('Resource could not be found.')]
      const addresses = (url.searchParams.get('addresses') ?? '').toLowerCase().split(',').filter(Boolean)
      const uuid = url.searchParams.get('node_uuid')
      if (!addresses.length && !uuid) return [400, errorBody("At least one of 'addresses' and 'node_uuid' parameters is required")]
      const node = (uuid && nodes.get(uuid)) || addresses.map((a) => byMac.get(a)).find(Boolean)
      if (!node || node.baseline) return [404, errorBody('Resource could not be found.')]
      node.lookups.push(Date.now())
      notify(node)
      // The token is handed out once; later lookups see it masked, as in Ironic.
      const token = node.tokenGiven ? '******' : node.token
      node.tokenGiven = true
      return [
        200,
        JSON.stringify({
          node: {
            uuid: node.uuid,
            properties: {cpu_arch: 'x86_64', cpus: 1, memory_mb: node.memoryMiB ?? 1024, local_gb: 5},
            instance_info: {},
            driver_internal_info: {clean_steps: null, agent_erase_devices_iterations: 1, agent_erase_devices_zeroize: true, agent_secret_token: '******'},
            links: [
              {href: `${base}/v1/nodes/${node.uuid}`, rel: 'self'},
              {href: `${base}/nodes/${node.uuid}`, rel: 'bookmark'},
            ],
          },
          config: {
            metrics: {backend: 'noop', prepend_host: false, prepend_uuid: false, prepend_host_reverse: true, global_prefix: null},
            metrics_statsd: {statsd_host: 'localhost', statsd_port: 8125},
            heartbeat_timeout: 300,
            agent_token: token,
            agent_token_required: true,
            disable_deep_image_inspection: false,
            permitted_image_formats: ['raw', 'qcow2', 'iso'],
            enable_bios_bootloader_install: true,
          },
        }),
      ]
    }
    const hb = /^\/v1\/heartbeat\/([^/]+)$/.exec(p)
    if (hb && (req.method === 'POST' || req.method === 'GET')) {
      const node = nodes.get(decodeURIComponent(hb[1]))
      if (!node) return [404, errorBody('Resource could not be found.')]
      if (!node.baseline) {
        if (req.method !== 'POST') return [405, errorBody('Method not allowed.')]
        let data
        try {
          data = JSON.parse(body || '{}')
        } catch {
          return [400, errorBody('Invalid JSON in the request body.')]
        }
        if (!asked) return [404, errorBody('Resource could not be found.')]
        if (!data.agent_version) return [400, errorBody('Agent did not transmit a version, and a version is required. Please update the agent being used.')]
        if (!data.agent_token) return [400, errorBody('Agent token is required for heartbeat processing.')]
        if (data.agent_token !== node.token) return [400, errorBody('Invalid or missing agent token received.')]
        node.callbackUrl = data.callback_url
        node.agentVersion = data.agent_version
      }
      node.heartbeats.push(Date.now())
      notify(node)
      return [202, '']
    }
    return [404, errorBody('Resource could not be found.')]
  }

  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      let status
      let out
      try {
        ;[status, out] = handle(req, body)
      } catch (err) {
        ;[status, out] = [500, errorBody(String(err?.message ?? err))]
      }
      requests.push({at: Date.now(), method: req.method, path: req.url, status})
      res.writeHead(status, {
        'Content-Type': 'application/json',
        'X-OpenStack-Ironic-API-Minimum-Version': MIN_VERSION,
        'X-OpenStack-Ironic-API-Maximum-Version': MAX_VERSION,
        'X-OpenStack-Ironic-API-Version': req.headers['x-openstack-ironic-api-version'] ?? MIN_VERSION,
        'Content-Length': Buffer.byteLength(out),
      })
      res.end(out)
    })
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({host: '127.0.0.1', port: 0}, resolve)
  })
  const port = server.address().port
  base = `http://127.0.0.1:${port}`

  return {
    port,
    /** The URL on this machine (tests). */
    url: base,
    /** The URL the guest uses (qemu user networking maps 10.0.2.2 to the host's loopback). */
    guestUrl: `http://10.0.2.2:${port}`,
    requests,
    addNode({mac, baseline = false, memoryMiB} = {}) {
      const node = {
        uuid: baseline ? `busybox-${randomUUID()}` : randomUUID(),
        mac: mac?.toLowerCase(),
        baseline,
        memoryMiB,
        token: randomBytes(32).toString('base64url'),
        tokenGiven: false,
        lookups: [],
        heartbeats: [],
        waiters: new Set(),
      }
      nodes.set(node.uuid, node)
      if (node.mac) byMac.set(node.mac, node)
      return node
    },
    /** Forget a node (its VM is gone): a late request from it gets 404. */
    removeNode(node) {
      nodes.delete(node.uuid)
      if (node.mac && byMac.get(node.mac) === node) byMac.delete(node.mac)
    },
    /** Resolves with the first heartbeat's arrival time; rejects after `timeoutMs` or when `signal` aborts. */
    waitForHeartbeat(node, timeoutMs, signal) {
      return new Promise((resolve, reject) => {
        const finish = (fn) => {
          clearTimeout(timer)
          node.waiters.delete(check)
          signal?.removeEventListener('abort', onAbort)
          fn()
        }
        const check = () => {
          if (node.heartbeats.length) finish(() => resolve(node.heartbeats[0]))
        }
        const onAbort = () => finish(() => reject(signal.reason ?? new Error('aborted')))
        const timer = setTimeout(() => finish(() => reject(new Error(`no heartbeat within ${timeoutMs / 1000} s`))), timeoutMs)
        signal?.addEventListener('abort', onAbort)
        node.waiters.add(check)
        check()
      })
    },
    close() {
      server.closeAllConnections?.()
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
