/**
 * Structured JSON logging for the agent: one JSON object per line on stderr.
 * The most recent lines are also kept in memory so log.collect_system_logs can hand them to Ironic.
 * Every line is redacted (redact.ts) before it goes anywhere: string fields under secret-looking
 * keys become "***", and known secrets, `ipa-agent-token=…`, URL credentials … are masked in
 * every string.
 */
import {isSecretKey, MASK, redactText} from './redact.js'

export type Level = 'debug' | 'info' | 'warn' | 'error'
const RANK: Record<Level, number> = {debug: 10, info: 20, warn: 30, error: 40}
const KEEP_LINES = 10_000

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
  child(fields: Record<string, unknown>): Logger
}

interface Sink {
  minLevel: Level
  write: (line: string) => void
  recent: string[]
}

const sink: Sink = {
  minLevel: 'info',
  write: (line) => process.stderr.write(`${line}\n`),
  recent: [],
}

/** Set the lowest level written (ipa-debug switches to 'debug'). */
export function setLogLevel(level: Level): void {
  sink.minLevel = level
}

/** Redirect output (tests). */
export function setLogWriter(write: (line: string) => void): void {
  sink.write = write
}

/** The last lines logged, oldest first. */
export function recentLogLines(): readonly string[] {
  return sink.recent
}

function serialiseError(err: unknown): unknown {
  if (err instanceof Error) return {name: err.name, message: err.message, stack: sink.minLevel === 'debug' ? err.stack : undefined}
  return err
}

function redactingReplacer(key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString()
  if (typeof value !== 'string') return value
  return key && isSecretKey(key) && value !== '' ? MASK : redactText(value)
}

function emit(level: Level, base: Record<string, unknown>, msg: string, fields?: Record<string, unknown>): void {
  if (RANK[level] < RANK[sink.minLevel]) return
  const record: Record<string, unknown> = {time: new Date().toISOString(), level, msg, ...base}
  if (fields) for (const [k, v] of Object.entries(fields)) record[k] = k === 'err' || v instanceof Error ? serialiseError(v) : v
  let line: string
  try {
    line = JSON.stringify(record, redactingReplacer)
  } catch {
    line = JSON.stringify({time: record.time, level, msg: redactText(msg), note: 'unserialisable log fields'})
  }
  sink.recent.push(line)
  if (sink.recent.length > KEEP_LINES) sink.recent.splice(0, sink.recent.length - KEEP_LINES)
  sink.write(line)
}

function make(base: Record<string, unknown>): Logger {
  return {
    debug: (m, f) => emit('debug', base, m, f),
    info: (m, f) => emit('info', base, m, f),
    warn: (m, f) => emit('warn', base, m, f),
    error: (m, f) => emit('error', base, m, f),
    child: (fields) => make({...base, ...fields}),
  }
}

export const log: Logger = make({})
