/**
 * Defaults that more than one part of rdk uses: one definition each.
 */
import {homedir} from 'node:os'
import {join} from 'node:path'
import {UserError} from './errors.js'

/** mtime of every file rdk writes when SOURCE_DATE_EPOCH is not set: 2024-01-01T00:00:00Z. Never "now". */
export const DEFAULT_SOURCE_DATE_EPOCH = 1704067200

/**
 * The cache of downloaded packages and stage outputs: $RDK_CACHE_DIR, else $XDG_CACHE_HOME/rdk,
 * else ~/.cache/rdk. Empty variables count as unset.
 */
export function defaultCacheDir(env: Record<string, string | undefined> = process.env, home: string = homedir()): string {
  if (env.RDK_CACHE_DIR) return env.RDK_CACHE_DIR
  return join(env.XDG_CACHE_HOME || join(home, '.cache'), 'rdk')
}

/** How the cache default reads in help and docs. */
export const DEFAULT_CACHE_DIR_HELP = '$RDK_CACHE_DIR, else $XDG_CACHE_HOME/rdk, else ~/.cache/rdk'

/** The largest timestamp rdk accepts: a cpio header holds 32 bits. */
export const MAX_SOURCE_DATE_EPOCH = 0xffffffff

/**
 * $SOURCE_DATE_EPOCH (whole seconds, 0 … 2^32-1), else DEFAULT_SOURCE_DATE_EPOCH. A value that is
 * set but not a number is an error (never silently ignored).
 */
export function sourceDateEpochFromEnv(
  env: Record<string, string | undefined> = process.env,
  fail: (message: string) => Error = (m) => new UserError(m),
): number {
  const raw = env.SOURCE_DATE_EPOCH
  if (raw === undefined || raw === '') return DEFAULT_SOURCE_DATE_EPOCH
  if (!/^\d+$/.test(raw.trim())) throw fail(`SOURCE_DATE_EPOCH must be a whole number of seconds, got ${JSON.stringify(raw)}`)
  return checkEpoch(Number(raw.trim()), 'SOURCE_DATE_EPOCH', fail)
}

export function checkEpoch(n: number, where: string, fail: (message: string) => Error = (m) => new UserError(m)): number {
  if (!Number.isSafeInteger(n) || n < 0 || n > MAX_SOURCE_DATE_EPOCH)
    throw fail(`${where}: must be between 0 and ${MAX_SOURCE_DATE_EPOCH} (a cpio timestamp), got ${n}`)
  return n
}
