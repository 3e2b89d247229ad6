/**
 * The one user-error model of every rdk command (rdk build, elements, boot, iso, agent, inventory).
 *
 * A UserError is something the user can act on: its message says what is wrong, its hint what to
 * do, and its exit code which kind of failure it is. The command layer (src/commands/base.ts)
 * prints `rdk <command>: error: <message>` and `hint: <hint>` on stderr, a stack trace only with
 * --debug or $DEBUG set, and exits with the code. Anything that is not a UserError is an internal
 * failure (a bug or an unexpected condition): exit 1, and the message asks for --debug.
 *
 * Exit codes (docs/architecture.md "Errors and exit codes"):
 *   0    success
 *   1    the build or run failed (a stage, a tool, the network, a bug)
 *   2    usage or configuration error (bad flag, bad rdk.yaml, unknown element or package,
 *        missing host tool): fix the input or the host and run again
 *   130  interrupted by SIGINT, 143 interrupted by SIGTERM
 *
 * No oclif here: the agent bundle (src/agent) uses these classes too (ToolMissingError).
 */

export const EXIT_OK = 0
export const EXIT_FAILURE = 1
export const EXIT_USAGE = 2
export const EXIT_SIGINT = 130
export const EXIT_SIGTERM = 143

export type UserExitCode = typeof EXIT_FAILURE | typeof EXIT_USAGE

export interface UserErrorOptions {
  /** What to do about it (one line, printed as `hint: …`). */
  hint?: string
  /** 1: the build/run failed; 2: usage or configuration error (the default). */
  exit?: UserExitCode
  cause?: unknown
}

export class UserError extends Error {
  readonly hint: string | undefined
  readonly exit: UserExitCode

  constructor(message: string, opts: UserErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : {cause: opts.cause})
    this.name = 'UserError'
    this.hint = opts.hint
    this.exit = opts.exit ?? EXIT_USAGE
  }
}

/** The run was interrupted by SIGINT (exit 130) or SIGTERM (exit 143). */
export class InterruptedError extends UserError {
  readonly signal: NodeJS.Signals
  constructor(what: string, signal: NodeJS.Signals) {
    super(`${what} interrupted by ${signal}`, {exit: EXIT_FAILURE})
    this.name = 'InterruptedError'
    this.signal = signal
  }

  get signalExitCode(): number {
    return this.signal === 'SIGINT' ? EXIT_SIGINT : EXIT_SIGTERM
  }
}

export function isUserError(err: unknown): err is UserError {
  return err instanceof UserError
}

/** What the command layer prints and exits with, for any thrown value. */
export interface ErrorReport {
  message: string
  hint?: string
  exitCode: number
  /** Whether this is an internal failure (not a UserError). */
  internal: boolean
  stack?: string
}

/**
 * Describe a thrown value. A wrapper whose `cause` is a UserError (e.g. a failed build stage,
 * StageFailedError) keeps its own message but takes the cause's hint and exit code; a wrapper of
 * anything else is an internal failure.
 */
export function describeError(err: unknown): ErrorReport {
  const user = err instanceof UserError ? err : err instanceof Error && err.cause instanceof UserError ? err.cause : undefined
  let stack = err instanceof Error ? err.stack : undefined
  if (stack && err instanceof Error && err.cause instanceof Error && err.cause.stack) stack += `\ncaused by: ${err.cause.stack}`
  const message = err instanceof Error ? err.message || err.name : String(err)
  if (!user) return {message, exitCode: EXIT_FAILURE, internal: true, stack}
  const hint = (err instanceof UserError ? err.hint : undefined) ?? user.hint
  const exitCode = user instanceof InterruptedError ? user.signalExitCode : user.exit
  return {message, ...(hint ? {hint} : {}), exitCode, internal: false, stack}
}
