/**
 * Compressed-size estimates for a set of files, as they would weigh inside a compressed initramfs:
 * the contents are concatenated (cpio headers are noise) and compressed with gzip -9 (zlib) and
 * zstd -19 (the `zstd` binary: Node 20's zlib has no zstd).
 */
import {gzipSync} from 'node:zlib'
import {runBuffer} from '../common/exec.js'

export interface SizeFigures {
  raw: number
  gzip9?: number
  zstd19?: number
}

export interface MeasureOptions {
  /** Also compress (slow for large inputs: zstd -19 runs at a few MB/s). Default true. */
  compress?: boolean
}

export async function measureBuffers(buffers: readonly Buffer[], opts: MeasureOptions = {}): Promise<SizeFigures> {
  const raw = buffers.reduce((n, b) => n + b.length, 0)
  if (opts.compress === false || raw === 0) return {raw, ...(raw === 0 ? {gzip9: 0, zstd19: 0} : {})}
  const all = buffers.length === 1 ? buffers[0]! : Buffer.concat(buffers)
  const gzip9 = gzipSync(all, {level: 9}).length
  const z = await runBuffer('zstd', ['-19', '-T0', '-q', '-c'], {input: all, timeoutMs: 20 * 60_000})
  return {raw, gzip9, zstd19: z.stdout.length}
}

export function formatBytes(n: number | undefined): string {
  if (n === undefined) return '-'
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(2)} MiB`
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${n} B`
}
