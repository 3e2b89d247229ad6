/**
 * Command execution with IPA's rules: one command in flight at a time (409 "Agent is busy"
 * while the last one still runs), sync commands run under a lock on the request, async commands
 * return RUNNING at once and finish in the background, every result is kept for the agent's life.
 *
 * A result is turned into plain JSON data once, when the command ends, and redacted (redact.ts):
 * a result JSON cannot carry (a cycle, a BigInt, a function, a getter that throws, more than
 * MAX_RESULT_CHARS) makes the command FAILED with a CommandExecutionError saying why, so the
 * command list — which Ironic polls — always serialises. Secrets a request carries are
 * remembered (redact.addSecretsFrom) before it runs, so they are masked wherever they show.
 */
import {randomUUID} from 'node:crypto'
import {
  AgentIsBusy,
  CommandExecutionError,
  InvalidCommandError,
  InvalidContentError,
  type RESTError,
  RequestedObjectNotFoundError,
  VersionMismatch,
  asRESTError,
} from './errors.js'
import type {Logger} from './log.js'
import {addSecretsFrom, redactJson} from './redact.js'

export type CommandStatus = 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CLEAN_VERSION_MISMATCH'

export interface CommandSpec<Ctx> {
  /** Async commands return RUNNING immediately and force a heartbeat when they end. */
  async: boolean
  /** Parameter names and whether each is required. */
  params: Record<string, 'required' | 'optional'>
  /** Accept extra parameters (IPA's **kwargs). */
  extraParams?: boolean
  /** Runs before the command starts; throw InvalidCommandParamsError to answer 400. */
  validate?: (params: Record<string, unknown>, ctx: Ctx) => void | Promise<void>
  run: (params: Record<string, unknown>, ctx: Ctx) => Promise<unknown>
}

export interface Extension<Ctx> {
  name: string
  commands: Record<string, CommandSpec<Ctx>>
}

/** A wrong parameter set. Ironic looks for type "TypeError" to fall back to older call forms. */
export class ParameterMismatch extends CommandExecutionError {
  constructor(details: string) {
    super(details)
    ;(this as {type: string}).type = 'TypeError'
  }
}

/** Largest command result kept, in characters of its JSON text (the log bundle is a few MB). */
export const MAX_RESULT_CHARS = 32 * 1024 * 1024

/** A value that JSON cannot carry faithfully, as an error naming what is wrong. */
class NotSerialisable extends Error {}
/** Thrown from inside JSON.stringify's replacer: what is wrong with one value. */
class Unfit extends Error {}

/**
 * `value` as plain JSON data (what JSON.parse returns), redacted; throws NotSerialisable for a
 * cycle, a BigInt, a function or symbol, a getter or toJSON that throws, or a result too big.
 */
export function plainJson(value: unknown, what = 'result'): unknown {
  let text: string | undefined
  try {
    text = JSON.stringify(value, (_key, v: unknown) => {
      if (typeof v === 'bigint') throw new Unfit('it contains a BigInt')
      if (typeof v === 'function') throw new Unfit('it contains a function')
      if (typeof v === 'symbol') throw new Unfit('it contains a symbol')
      return v
    })
  } catch (err) {
    const why =
      err instanceof Unfit
        ? err.message
        : err instanceof RangeError
          ? 'it is too big'
          : /circular/i.test(String((err as Error)?.message))
            ? 'it contains a cycle'
            : `serialising it threw: ${errText(err)}`
    throw new NotSerialisable(`The command ${what} cannot be serialised to JSON: ${why}`)
  }
  if (text === undefined) return null
  if (text.length > MAX_RESULT_CHARS) {
    throw new NotSerialisable(`The command ${what} cannot be serialised to JSON: it is too big (${text.length} characters, at most ${MAX_RESULT_CHARS})`)
  }
  return redactJson(JSON.parse(text))
}

function errText(err: unknown): string {
  try {
    return err instanceof Error ? err.message : String(err)
  } catch {
    return 'an unprintable value'
  }
}

function notSerialisableError(err: unknown, what: string): CommandExecutionError {
  return new CommandExecutionError(err instanceof NotSerialisable ? err.message : `The command ${what} cannot be serialised to JSON: ${errText(err)}`)
}

export class CommandResult {
  readonly id = randomUUID()
  status: CommandStatus = 'RUNNING'
  error: RESTError | null = null
  /** Plain, redacted JSON data (set when the command ends). */
  result: unknown = null
  /** The error as plain, redacted JSON data (set when the command fails). */
  private errorJson: Record<string, unknown> | null = null
  readonly done: Promise<void>
  private resolveDone!: () => void

  constructor(readonly commandName: string) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve))
  }

  get isDone(): boolean {
    return this.status !== 'RUNNING'
  }

  succeed(result: unknown, async: boolean): void {
    // IPA wraps a plain string result; async results get the command name prefixed.
    const wrapped = typeof result === 'string' ? {result: async ? `${this.commandName}: ${result}` : result} : (result ?? null)
    let plain: unknown
    try {
      plain = plainJson(wrapped)
    } catch (err) {
      this.fail(notSerialisableError(err, 'result'))
      return
    }
    this.result = plain
    this.status = 'SUCCEEDED'
    this.resolveDone()
  }

  fail(err: unknown): void {
    let rest: RESTError
    try {
      rest = asRESTError(err)
    } catch {
      rest = new CommandExecutionError('the command failed with an error that cannot be read')
    }
    let json: Record<string, unknown>
    try {
      json = plainJson(rest.toJSON(), 'error') as Record<string, unknown>
    } catch (e) {
      rest = notSerialisableError(e, 'error')
      json = plainJson(rest.toJSON(), 'error') as Record<string, unknown>
    }
    this.error = rest
    this.errorJson = json
    this.status = rest instanceof VersionMismatch ? 'CLEAN_VERSION_MISMATCH' : 'FAILED'
    this.result = null
    this.resolveDone()
  }

  toJSON(): Record<string, unknown> {
    return {
      id: this.id,
      command_name: this.commandName,
      command_status: this.status,
      command_error: this.errorJson,
      command_result: this.result,
    }
  }
}

/** Serialises commands the way IPA's command_lock does. */
export class CommandProcessor<Ctx> {
  private readonly results = new Map<string, CommandResult>()
  private readonly extensions = new Map<string, Extension<Ctx>>()
  private lock: Promise<void> = Promise.resolve()

  constructor(
    private readonly ctx: () => Ctx,
    private readonly log: Logger,
    private readonly onAsyncDone: (result: CommandResult) => void,
  ) {}

  register(ext: Extension<Ctx>): void {
    this.extensions.set(ext.name, ext)
  }

  extensionNames(): string[] {
    return [...this.extensions.keys()]
  }

  list(): CommandResult[] {
    return [...this.results.values()]
  }

  get(id: string): CommandResult {
    const r = this.results.get(id)
    if (!r) throw new RequestedObjectNotFoundError('Command Result', id)
    return r
  }

  /** Run `name` ("<extension>.<command>") with `params`; resolves when a sync command is done or an async one started. */
  async execute(name: string, params: Record<string, unknown>): Promise<CommandResult> {
    addSecretsFrom(params)
    const release = await this.acquire()
    try {
      return await this.executeLocked(name, params)
    } finally {
      release()
    }
  }

  /**
   * Run a command from inside another one (flow.start_flow): no lock, no busy check, not recorded
   * in the command list; resolves when it is done.
   */
  async runNested(name: string, params: Record<string, unknown>): Promise<CommandResult> {
    addSecretsFrom(params)
    const dot = name.indexOf('.')
    const ext = dot > 0 ? this.extensions.get(name.slice(0, dot)) : undefined
    const cmdName = name.slice(dot + 1)
    const spec = ext && Object.hasOwn(ext.commands, cmdName) ? ext.commands[cmdName] : undefined
    const result = new CommandResult(cmdName)
    if (!spec) {
      result.fail(new InvalidCommandError(`Unknown command: ${name}`))
      return result
    }
    try {
      checkParams(cmdName, spec, params)
      if (spec.validate) await spec.validate(params, this.ctx())
      result.succeed(await spec.run(params, this.ctx()), spec.async)
    } catch (err) {
      result.fail(err)
    }
    return result
  }

  private async acquire(): Promise<() => void> {
    let release!: () => void
    const next = new Promise<void>((r) => (release = r))
    const prev = this.lock
    this.lock = prev.then(() => next)
    await prev
    return release
  }

  private async executeLocked(name: string, params: Record<string, unknown>): Promise<CommandResult> {
    const dot = name.indexOf('.')
    if (dot < 0) throw new InvalidCommandError('Command name must be of the form <extension>.<name>')
    const extName = name.slice(0, dot)
    const cmdName = name.slice(dot + 1)
    const last = [...this.results.values()].at(-1)
    if (last && !last.isDone) {
      this.log.error('refusing a command while another one runs', {command: name, running: last.commandName})
      throw new AgentIsBusy(last.commandName)
    }
    const ext = this.extensions.get(extName)
    if (!ext) throw new RequestedObjectNotFoundError('Extension', extName)
    const spec = Object.hasOwn(ext.commands, cmdName) ? ext.commands[cmdName] : undefined
    if (!spec) throw new InvalidCommandError(`Unknown command: ${cmdName}`)

    const log = this.log.child({command: name})
    const result = new CommandResult(cmdName)
    const ctx = this.ctx()
    try {
      checkParams(cmdName, spec, params)
      if (spec.validate) await spec.validate(params, ctx)
    } catch (err) {
      if (err instanceof InvalidContentError) throw err
      if (err instanceof ParameterMismatch && spec.async) {
        // IPA: the TypeError happens in the worker thread, so the caller sees RUNNING then FAILED.
        this.results.set(result.id, result)
        result.fail(err)
        log.warn('command failed', {err})
        queueMicrotask(() => this.onAsyncDone(result))
        return result
      }
      const failed = new CommandResult(name)
      failed.fail(err)
      this.results.set(failed.id, failed)
      log.warn('command failed', {err})
      return failed
    }

    this.results.set(result.id, result)
    log.info('command started', {id: result.id, async: spec.async})
    const started = Date.now()
    if (!spec.async) {
      try {
        result.succeed(await spec.run(params, ctx), false)
        if (result.status === 'SUCCEEDED') log.info('command succeeded', {id: result.id, ms: Date.now() - started})
        else log.warn('command failed', {id: result.id, ms: Date.now() - started, err: result.error})
        return result
      } catch (err) {
        this.results.delete(result.id)
        // InvalidContentError goes straight back to the caller (400) and is not recorded.
        if (err instanceof InvalidContentError) throw err
        // IPA records other sync failures under the full "<extension>.<command>" name.
        const failed = new CommandResult(name)
        failed.fail(err)
        this.results.set(failed.id, failed)
        log.warn('command failed', {id: failed.id, ms: Date.now() - started, err})
        return failed
      }
    }
    const work = (async () => {
      try {
        result.succeed(await spec.run(params, ctx), true)
        if (result.status === 'SUCCEEDED') log.info('command succeeded', {id: result.id, ms: Date.now() - started})
        else log.warn('command failed', {id: result.id, ms: Date.now() - started, err: result.error})
      } catch (err) {
        result.fail(err)
        log.warn('command failed', {id: result.id, ms: Date.now() - started, err})
      }
    })()
    void work.then(() => this.onAsyncDone(result))
    return result
  }
}

function checkParams<Ctx>(cmd: string, spec: CommandSpec<Ctx>, params: Record<string, unknown>): void {
  if (!spec.extraParams) {
    const unexpected = Object.keys(params).filter((k) => !Object.hasOwn(spec.params, k))
    if (unexpected.length) throw new ParameterMismatch(`${cmd}() got an unexpected keyword argument '${unexpected[0]}'`)
  }
  const missing = Object.entries(spec.params)
    .filter(([k, need]) => need === 'required' && !Object.hasOwn(params, k))
    .map(([k]) => `'${k}'`)
  if (missing.length) {
    throw new ParameterMismatch(`${cmd}() missing ${missing.length} required keyword argument${missing.length > 1 ? 's' : ''}: ${missing.join(' and ')}`)
  }
}
