/**
 * The builder's errors: UserErrors (src/common/errors.ts) whose message says it all, so the
 * command layer prints them without a stack trace. BuildError: the build failed (exit 1);
 * SpecError and ElementError: the spec or the element graph is wrong (exit 2).
 */
import {EXIT_FAILURE, EXIT_USAGE, InterruptedError, UserError, type UserErrorOptions} from '../common/errors.js'

export {isUserError} from '../common/errors.js'

export class BuildError extends UserError {
  constructor(message: string, opts: UserErrorOptions = {}) {
    super(message, {exit: EXIT_FAILURE, ...opts})
    this.name = 'BuildError'
  }
}

/** A build spec (rdk.yaml or flags) is wrong. */
export class SpecError extends BuildError {
  constructor(message: string, opts: UserErrorOptions = {}) {
    super(message, {exit: EXIT_USAGE, ...opts})
    this.name = 'SpecError'
  }
}

/** An element is unknown, malformed, or the element graph cannot be resolved. */
export class ElementError extends BuildError {
  constructor(message: string, opts: UserErrorOptions = {}) {
    super(message, {exit: EXIT_USAGE, ...opts})
    this.name = 'ElementError'
  }
}

/** The build was interrupted by SIGINT/SIGTERM (exit 130/143). */
export class BuildInterruptedError extends InterruptedError {
  constructor(signal: NodeJS.Signals) {
    super('build', signal)
    this.name = 'BuildInterruptedError'
  }
}
