/**
 * Initramfs compression, reproducible: the same input gives the same bytes every time.
 *
 * - gzip: node:zlib, level 9, header fixed (no name, mtime 0, OS = Unix). No host tool needed.
 * - xz:   the `xz` program, `--check=crc32` (the kernel's XZ decoder rejects CRC64/SHA-256),
 *         `--threads=1` (multi-threaded xz splits blocks differently), LZMA2 preset 9e with a 32 MiB
 *         dictionary (the kernel allocates the dictionary while it unpacks: 64 MiB would cost RAM at
 *         boot for 0.1 MB less), and for content that is mostly x86 executables and shared libraries
 *         (`x86: true`) the x86 BCJ filter (the kernel's decoder has it: CONFIG_XZ_DEC_X86): 5% smaller
 *         for Node and the toolset, 8% larger for kernel modules (relocatable objects), hence a choice.
 * - zstd: the `zstd` program, `-19 --single-thread` (no worker threads, no job splitting).
 * - none: the cpio archive as is.
 *
 * Output bytes depend on the compressor's version (zlib in Node, xz-utils, zstd), so "same input ⇒
 * same output" holds for one rdk install; the build manifest records the versions.
 */
import {createReadStream, createWriteStream} from 'node:fs'
import {writeFile} from 'node:fs/promises'
import {pipeline} from 'node:stream/promises'
import {gzipTo} from '../common/gzip.js'
import {run, runBuffer} from '../common/exec.js'

export const COMPRESSIONS = ['gzip', 'xz', 'zstd', 'none'] as const
export type Compression = (typeof COMPRESSIONS)[number]

/** Host program a compression needs (undefined: none). */
export function compressionTool(kind: Compression): string | undefined {
  return kind === 'xz' ? 'xz' : kind === 'zstd' ? 'zstd' : undefined
}

export {gzipStream, gzipTo} from '../common/gzip.js'

/**
 * Compress the file `input` into `output`; `input` is left in place. xz and zstd go through
 * runBuffer() (a missing program names its Debian package) and write to stdout, so only this
 * process ever creates `output`: an interrupted build can always remove it.
 */
export async function compressFile(kind: Compression, input: string, output: string, opts: {x86?: boolean} = {}): Promise<void> {
  switch (kind) {
    case 'none':
      await pipeline(createReadStream(input, {highWaterMark: 1 << 20}), createWriteStream(output, {mode: 0o644}))
      return
    case 'gzip':
      await gzipTo(createReadStream(input, {highWaterMark: 1 << 20}), output)
      return
    case 'zstd': {
      const r = await runBuffer('zstd', ['-19', '--single-thread', '--no-progress', '-q', '-c', '--', input])
      await writeFile(output, r.stdout, {mode: 0o644})
      return
    }
    case 'xz': {
      const r = await runBuffer('xz', [
        '--compress',
        '--stdout',
        '--check=crc32',
        '--threads=1',
        ...(opts.x86 ? ['--x86'] : []),
        '--lzma2=preset=9e,dict=32MiB',
        '--',
        input,
      ])
      await writeFile(output, r.stdout, {mode: 0o644})
      return
    }
  }
}

/** Version line of the tool behind a compression (for the manifest). */
export async function compressorVersion(kind: Compression): Promise<string> {
  if (kind === 'gzip') return `zlib ${process.versions.zlib}`
  if (kind === 'none') return 'none'
  const r = await run(kind, ['--version'], {allowFailure: true})
  return (r.stdout || r.stderr).split('\n')[0]!.trim()
}
