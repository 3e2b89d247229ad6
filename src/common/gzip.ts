/**
 * Reproducible gzip (node:zlib, level 9, header pinned: no name, mtime 0, OS = Unix): the same
 * input gives the same bytes. Used by the initramfs compression (src/builder/compress.ts) and the
 * tar.gz bundle (src/artefacts/bundle.ts).
 */
import {createWriteStream} from 'node:fs'
import {Readable, Transform, type Writable} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {constants, createGzip} from 'node:zlib'

/** Pin gzip's header: no FNAME, MTIME 0, XFL 2 (max compression), OS 3 (Unix) whatever the platform. */
function fixGzipHeader(): Transform {
  let done = false
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (!done) {
        if (chunk.length < 10) return cb(new Error('gzip: short header chunk'))
        chunk = Buffer.from(chunk)
        chunk.writeUInt32LE(0, 4)
        chunk[8] = 2
        chunk[9] = 3
        done = true
      }
      cb(null, chunk)
    },
  })
}

export function gzipStream(): Transform {
  return createGzip({level: 9, memLevel: 9, strategy: constants.Z_DEFAULT_STRATEGY, chunkSize: 1 << 20})
}

/** Stream `source` through gzip into `dest`. */
export async function gzipTo(source: Readable | AsyncIterable<Buffer>, dest: string | Writable): Promise<void> {
  const out = typeof dest === 'string' ? createWriteStream(dest, {mode: 0o644}) : dest
  await pipeline(source instanceof Readable ? source : Readable.from(source), gzipStream(), fixGzipHeader(), out)
}
