/**
 * The base of every rdk command: the one place errors become stderr lines and exit codes
 * (src/common/errors.ts has the model and the codes).
 *
 *   rdk build: error: <message>
 *   hint: <what to do>
 *
 * A stack trace follows only with --debug or $DEBUG set. Errors that are not UserErrors are
 * internal failures: exit 1 and a line saying how to get the stack trace.
 */
import {Command, Errors, Flags} from '@oclif/core'
import {ConfigError} from '../agent/config.js'
import {describeError, EXIT_USAGE, UserError} from '../common/errors.js'

/** Errors of layers that keep their own classes (the agent's config, oclif's flag parser) as UserErrors. */
export function asUserError(err: unknown, command: string): unknown {
  // The agent's settings (src/agent/config.ts; its own class, the agent bundle has no CLI): exit 2.
  if (err instanceof ConfigError) return new UserError(err.message, {cause: err})
  // oclif's flag and argument errors (unknown flag, bad option value, missing required flag).
  if (err instanceof Errors.CLIError && !(err instanceof Errors.ExitError)) {
    return new UserError(err.message.replace(/\n*\s*See more help with --help$/, ''), {
      exit: EXIT_USAGE,
      hint: `rdk ${command} --help lists the flags`,
      cause: err,
    })
  }
  return err
}

function debugWanted(): boolean {
  return process.argv.includes('--debug') || Boolean(process.env.DEBUG)
}

export abstract class RdkCommand extends Command {
  static override baseFlags = {
    debug: Flags.boolean({description: 'print stack traces of errors (also: $DEBUG set)', helpGroup: 'GLOBAL'}),
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
    // this.exit(n) and oclif's own exits pass through.
    if (err instanceof Errors.ExitError) throw err
    const id = this.id ?? 'rdk'
    const report = describeError(asUserError(err, id))
    const lines = [`rdk ${id}: error: ${report.message}`]
    if (report.hint) lines.push(`hint: ${report.hint}`)
    if (debugWanted()) {
      if (report.stack) lines.push(report.stack)
    } else if (report.internal) {
      lines.push('(an internal error: run again with --debug for the stack trace, and report it)')
    }
    process.stderr.write(`${lines.join('\n')}\n`)
    process.exitCode = report.exitCode
    return undefined
  }
}
