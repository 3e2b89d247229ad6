/**
 * The agent's life, in IPA's order: load hardware managers → wait for a NIC → inspection (if
 * configured) → lookup → API server (auto-TLS when Ironic allows) → heartbeats. When Ironic wipes
 * the agent token (it does on every power action), heartbeats are refused and the agent goes back
 * to lookup for a fresh token instead of giving up.
 */
import {mkdir, writeFile} from 'node:fs/promises'
import {hostname} from 'node:os'
import {join} from 'node:path'
import {AgentApi} from './api/server.js'
import {CommandProcessor} from './commands.js'
import type {AgentConfig} from './config.js'
import {HeartbeatConflictError, HeartbeatError, LookupNodeError} from './errors.js'
import {logExtension} from './extensions/log.js'
import {flow, image, poll, rescue, system} from './extensions/misc.js'
import {standby} from './extensions/standby.js'
import {stepsExtension} from './extensions/steps.js'
import {runInspection} from './inspector.js'
import {AGENT_VERIFY_CA_MIN, cmpVersion, IronicClient, sleep, type LookupResult} from './ironic-client.js'
import {GenericHardwareManager} from './hardware/generic.js'
import {loadManagers} from './hardware/loader.js'
import {ManagerRegistry} from './hardware/manager.js'
import type {HardwareManager} from './hardware/manager.js'
import type {NetworkInterface, NodeInfo} from './hardware/types.js'
import {log as rootLog, setLogLevel, type Logger} from './log.js'
import {addSecret} from './redact.js'
import type {AgentRuntime} from './runtime.js'
import {systemActions} from './system.js'
import {generateSelfSignedCert} from './tls.js'

export interface AgentOptions {
  version: string
  /** Extra managers (tests, embedding); loaded after the generic one and the directories. */
  managers?: HardwareManager[]
  log?: Logger
}

export interface RunningAgent {
  runtime: AgentRuntime
  /** Port the API listens on. */
  port: number
  /** Resolves when the agent stops (stop(), rescue or lockdown). */
  stopped: Promise<void>
  stop(): Promise<void>
}

const TOKEN_MIN_LENGTH = 32
const MASKED = '******'

export async function startAgent(config: AgentConfig, opts: AgentOptions): Promise<RunningAgent> {
  // The token is masked wherever it would show (log, bundle, results); no request can change the config.
  addSecret(config.agentToken)
  deepFreeze(config)
  if (config.debug) setLogLevel('debug')
  const log = opts.log ?? rootLog
  const startedAt = Date.now() / 1000
  log.info('rdk agent starting', {version: opts.version, api_url: config.apiUrl, standalone: config.standalone})

  const registry = new ManagerRegistry()
  const managers = [...(await loadManagers(config.hardwareManagersDir, log)), ...(opts.managers ?? [])]
  await registry.load(managers, {config, log, registry})
  log.info('hardware managers ready', {versions: registry.currentVersions()})
  if (config.hardwareInitializationDelay > 0) await sleep(config.hardwareInitializationDelay * 1000)

  let stopResolve!: () => void
  const stopped = new Promise<void>((r) => (stopResolve = r))
  let stopping = false
  let token: string | undefined = config.agentToken
  // Whatever token the agent holds is masked from the moment it is used: the config's (above), a
  // generated one, and one from lookup or continue_inspection before the heartbeat that carries it
  // (Ironic sends no command before that heartbeat).
  const currentToken = (): string | undefined => {
    addSecret(token)
    return token
  }
  const state = {node: undefined as NodeInfo | undefined, uuid: undefined as string | undefined, heartbeatTimeout: 300}
  let api: AgentApi | undefined
  let heartbeater: Heartbeater | undefined

  const runtime: AgentRuntime = {
    config,
    registry,
    log,
    version: opts.version,
    processor: undefined as unknown as CommandProcessor<AgentRuntime>,
    partitionUuids: {},
    system: await systemActions(config.systemActions, log),
    get node() {
      return state.node
    },
    set node(n) {
      state.node = n
    },
    async stopServing() {
      if (stopping) return
      stopping = true
      heartbeater?.stop()
      await api?.close()
      stopResolve()
    },
  }
  const processor = new CommandProcessor<AgentRuntime>(
    () => runtime,
    log,
    () => heartbeater?.force(),
  )
  runtime.processor = processor
  for (const ext of [stepsExtension('clean'), stepsExtension('deploy'), stepsExtension('service'), standby, image, poll, logExtension, flow, rescue, system]) {
    processor.register(ext)
  }

  const ironic = config.apiUrl.length && !config.standalone ? new IronicClient(config, log) : undefined
  if (!ironic && !config.standalone) log.warn('no ipa-api-url given: serving the API without lookup or heartbeats')
  if (config.standalone && !token) {
    const {randomBytes} = await import('node:crypto')
    token = randomBytes(32).toString('base64url')
    addSecret(token)
    // Never logged: written where only root can read it.
    const file = join(config.autoTlsDir, 'agent-token')
    try {
      await mkdir(config.autoTlsDir, {recursive: true, mode: 0o700})
      await writeFile(file, `${token}\n`, {mode: 0o600})
      log.warn('standalone mode: generated an agent token; POST /v1/commands/ needs ?agent_token=', {token_file: file})
    } catch (err) {
      log.error('standalone mode: generated an agent token but could not save it; give one with ipa-agent-token', {token_file: file, err})
    }
  }

  let macs: string[] = []
  if (ironic || config.inspectionCallbackUrl) macs = await waitForInterfaces(registry, log)

  if (config.inspectionCallbackUrl) {
    const outcome = await runInspection(runtime, ironic ?? new IronicClient({...config, apiUrl: []}, log), config.inspectionCallbackUrl!)
    if (outcome.uuid) state.uuid = outcome.uuid
    // Ironic's built-in inspection (API ≥ 1.84) made a token for us before processing the data: it
    // is ours, and the lookup that follows only gets "******" (keep it, or that lookup would look
    // like another agent holds the token and lock us down).
    const given = outcome.lookup?.config.agent_token
    if (typeof given === 'string' && given !== MASKED && given.length >= TOKEN_MIN_LENGTH) {
      token = given
      log.info('agent token received from inspection')
    }
  }

  const lookupOnce = async (deadline: number | undefined, maxDelay = 60): Promise<LookupResult> => {
    let attempt = 0
    let conflicts = 0
    for (;;) {
      if (stopping) throw new LookupNodeError('agent is stopping')
      const outcome = await ironic!.lookup(macs, state.uuid)
      if (outcome.kind === 'ok') return outcome.result
      attempt++
      const now = Date.now()
      if (deadline !== undefined && now >= deadline) throw new LookupNodeError(`lookup did not succeed within ${config.lookupTimeout} s: ${outcome.reason}`)
      let delay = Math.max(config.lookupInterval, Math.random() * Math.min(maxDelay, config.lookupInterval * 2 ** attempt)) * 1000
      if (outcome.conflict) delay += [5, 10, 30][Math.min(conflicts++, 2)]! * 1000
      if (deadline !== undefined) delay = Math.min(delay, Math.max(0, deadline - now))
      log.info('lookup not successful yet, retrying', {reason: outcome.reason, retry_in_s: Math.round(delay / 100) / 10})
      await sleep(delay)
    }
  }

  /** Apply a lookup answer; returns false if the token situation forbids going on (IPA's lockdown case). */
  const applyLookup = (result: LookupResult): boolean => {
    state.uuid = result.node.uuid
    state.node = result.node as NodeInfo
    const hb = Number(result.config.heartbeat_timeout)
    if (Number.isFinite(hb) && hb > 0) state.heartbeatTimeout = hb
    const given = result.config.agent_token
    if (typeof given === 'string' && given !== MASKED && given.length >= TOKEN_MIN_LENGTH) {
      token = given
      log.info('agent token received from lookup')
    } else if (given === MASKED && !token) {
      log.error('lookup returned a masked agent token and this agent holds none: another agent may hold it')
      return false
    }
    for (const m of registry.managers) {
      if ('skipBmcDetect' in m) (m as {skipBmcDetect?: boolean}).skipBmcDetect = Boolean(result.config.agent_skip_bmc_detect)
      if ('cachedNode' in m || m instanceof GenericHardwareManager) (m as {cachedNode?: NodeInfo}).cachedNode = state.node
    }
    return true
  }

  if (ironic) {
    const result = await lookupOnce(Date.now() + config.lookupTimeout * 1000)
    if (!applyLookup(result)) {
      await lockdown(runtime)
      throw new LookupNodeError('agent token is held by someone else ("******" from lookup); locked down')
    }
    log.info('lookup succeeded', {node: state.uuid, heartbeat_timeout: state.heartbeatTimeout})
  }

  // TLS for the API: static, or auto-generated when Ironic can receive our CA (API >= 1.68).
  let tls: ConstructorParameters<typeof AgentApi>[0]['tls']
  let verifyCa: string | undefined
  let advertiseHost = config.advertiseHost
  let protocol = config.advertiseProtocol
  const tlsMin = config.tlsMinVersion === '1.3' ? 'TLSv1.3' : 'TLSv1.2'
  if (ironic && !advertiseHost) advertiseHost = await ironic.findAdvertiseAddress(config.ipLookupAttempts, config.ipLookupSleep)
  if (config.listenTls) {
    const {readFile} = await import('node:fs/promises')
    tls = {cert: await readFile(config.tlsCertFile!), key: await readFile(config.tlsKeyFile!), minVersion: tlsMin, ciphers: config.tlsCipherSuites}
    protocol = 'https'
  } else if (ironic && config.enableAutoTls && cmpVersion(await ironic.apiVersion(), AGENT_VERIFY_CA_MIN) >= 0) {
    const cert = generateSelfSignedCert({address: advertiseHost!, commonName: hostname(), curve: config.tlsCertificateCurve as 'p384'})
    await mkdir(config.autoTlsDir, {recursive: true, mode: 0o700}).catch(() => undefined)
    await writeFile(join(config.autoTlsDir, 'agent.crt'), cert.certPem).catch((err) => log.warn('could not save the auto-TLS certificate', {err}))
    await writeFile(join(config.autoTlsDir, 'agent.key'), cert.keyPem, {mode: 0o600}).catch(() => undefined)
    tls = {cert: cert.certPem, key: cert.keyPem, minVersion: tlsMin, ciphers: config.tlsCipherSuites}
    verifyCa = cert.certPem
    protocol = 'https'
    log.info('auto-TLS enabled: the API is served over https with a self-signed certificate', {address: advertiseHost})
  }

  api = new AgentApi({
    processor: processor as CommandProcessor<unknown>,
    log,
    version: opts.version,
    startedAt,
    token: () => token,
    tls,
    limits: {maxBodyBytes: config.apiMaxBodySize * 1024 * 1024, clientTimeoutMs: config.apiClientTimeout * 1000},
  })
  const port = await api.listen(config.listenHost, config.listenPort)
  log.info('agent API listening', {host: config.listenHost, port, tls: Boolean(tls)})

  if (ironic) {
    const host = advertiseHost!.includes(':') ? `[${advertiseHost}]` : advertiseHost!
    const callbackUrl = `${protocol}://${host}:${config.advertisePort ?? port}`
    heartbeater = new Heartbeater(
      log,
      () => state.heartbeatTimeout,
      async () => {
        if (!state.uuid) throw new HeartbeatError('no node')
        await ironic.heartbeat(state.uuid, {callbackUrl, token: currentToken(), agentVersion: opts.version, verifyCa})
      },
      async () => {
        // Ironic wiped our token (power action): look up again for a fresh one, without a deadline.
        log.warn('Ironic refused our agent token (it wipes it on power actions): looking up again')
        token = undefined
        for (;;) {
          if (stopping) return
          // Retry no slower than Ironic expects heartbeats, so the next step is not held up.
          const result = await lookupOnce(undefined, Math.min(60, Math.max(5, state.heartbeatTimeout * 0.5)))
          if (applyLookup(result) && token) return
          log.warn('lookup returned no usable token yet; retrying')
          await sleep(5000 + Math.random() * 5000)
        }
      },
    )
    heartbeater.start()
  }

  return {
    runtime,
    port,
    stopped,
    stop: () => runtime.stopServing(),
  }
}

function deepFreeze(o: unknown): void {
  if (o === null || typeof o !== 'object' || Object.isFrozen(o) || ArrayBuffer.isView(o)) return
  Object.freeze(o)
  for (const v of Object.values(o)) deepFreeze(v)
}

async function lockdown(rt: AgentRuntime): Promise<void> {
  await rt.system.networkDown()
  await rt.stopServing()
}

/** IPA waits up to 60 s (every 5 s) for an interface with a MAC before lookup. */
async function waitForInterfaces(registry: ManagerRegistry, log: Logger): Promise<string[]> {
  const deadline = Date.now() + 60_000
  for (;;) {
    const ifaces = (await registry.dispatchToManagers('list_network_interfaces')) as NetworkInterface[]
    const macs = ifaces.map((i) => i.mac_address).filter((m): m is string => Boolean(m) && m !== '00:00:00:00:00:00')
    if (macs.length || Date.now() >= deadline) {
      if (!macs.length) log.warn('no network interface with a MAC address found')
      return macs
    }
    await sleep(5000)
  }
}

/**
 * IPA's heartbeat loop: first beat at once, then every heartbeat_timeout × U(0.3, 0.6); errors retry
 * after 5–10 s; force() beats right away (after every async command, so Ironic moves on at once).
 */
export class Heartbeater {
  private timer?: NodeJS.Timeout
  private running = false
  private stopped = false
  private again = false

  constructor(
    private readonly log: Logger,
    private readonly timeout: () => number,
    private readonly beat: () => Promise<void>,
    private readonly relookup: () => Promise<void>,
  ) {}

  start(): void {
    this.schedule(0)
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  force(): void {
    if (this.stopped) return
    if (this.running) {
      this.again = true
      return
    }
    this.schedule(0)
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer)
    if (this.stopped) return
    this.timer = setTimeout(() => void this.tick(), ms)
  }

  private async tick(): Promise<void> {
    if (this.stopped || this.running) return
    this.running = true
    let next: number
    try {
      await this.beat()
      this.log.info('heartbeat sent')
      next = this.timeout() * (0.3 + Math.random() * 0.3) * 1000
    } catch (err) {
      if (err instanceof HeartbeatError && /agent token/i.test(err.message)) {
        await this.relookup().catch((e) => this.log.error('re-lookup failed', {err: e}))
        next = 0
      } else {
        if (err instanceof HeartbeatConflictError) this.log.warn('heartbeat conflict (node locked); retrying', {err})
        else this.log.error('heartbeat failed; retrying', {err})
        next = 5000 * (1 + Math.random())
      }
    } finally {
      this.running = false
    }
    if (this.again) {
      this.again = false
      next = 0
    }
    this.schedule(next)
  }
}
