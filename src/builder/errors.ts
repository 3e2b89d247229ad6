/**
 * Errors the builder raises for things the user can fix (bad config, unknown element, missing
 * tool). `rdk build` prints their message without a stack trace; anything else is a bug and keeps
 * its stack.
 */
import {CommandFailedError, ToolMissingError} from '../common/exec.js'

export class BuildError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'BuildError'
  }
}

/** A build spec (rdk.yaml or flags) is wrong. */
export class SpecError extends BuildError {
  constructor(message: string) {
    super(message)
    this.name = 'SpecError'
  }
}

/** An element is unknown, malformed, or the element graph cannot be resolved. */
export class ElementError extends BuildError {
  constructor(message: string) {
    super(message)
    this.name = 'ElementError'
  }
}

/** The build was interrupted by SIGINT/SIGTERM. */
export class BuildInterruptedError extends BuildError {
  readonly signal: NodeJS.Signals
  constructor(signal: NodeJS.Signals) {
    super(`build interrupted by ${signal}`)
    this.name = 'BuildInterruptedError'
    this.signal = signal
  }
}

/** True for errors whose message is the whole story (no stack trace wanted). */
export function isUserError(err: unknown): err is Error {
  return err instanceof BuildError || err instanceof ToolMissingError || err instanceof CommandFailedError
}
