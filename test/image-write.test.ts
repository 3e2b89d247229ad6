/**
 * Image download and writing without disks: images built here with the real qemu-img from a random
 * raw disk with holes, served by a loopback HTTP server, written into regular files pre-filled with
 * junk (so the hole handling must make them read as zeros). Every result is compared by sha256
 * with the raw disk.
 */
import {createHash} from 'node:crypto'
import {mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {ImageChecksumError, ImageDownloadError, InvalidImage, RESTError} from '../src/agent/errors.js'
import {bypassProxy, ImageDownload, type DownloadSettings, type ImageInfo} from '../src/agent/image/download.js'
import {detectFormat, validateFormat} from '../src/agent/image/format.js'
import {parseQcow2Header} from '../src/agent/image/qcow2.js'
import {Target} from '../src/agent/image/target.js'
import {writeImage, type WriteResult} from '../src/agent/image/stream.js'
import {join, makeRawImage, MIB, qemuImg, quiet, sha256File, startImageServer, startProxy, type ImageServer} from './helpers/image.js'

const SIZE_MIB = 20
const settings: DownloadSettings = {connectionTimeout: 5, retries: 2, retryInterval: 0.05, maxDuration: 0, log: quiet}

let dir: string
let srv: ImageServer
let rawSha: string
const sums = new Map<string, string>()

function info(name: string, extra: Partial<ImageInfo> = {}): ImageInfo {
  return {id: name, urls: [`${srv.url}/${name}`], os_hash_algo: 'sha256', os_hash_value: sums.get(name)!, ...extra}
}

/** A target file of `mib` MiB full of 0xAA junk. */
function junkTarget(name: string, mib = SIZE_MIB + 4): string {
  const f = join(dir, `${name}.target`)
  writeFileSync(f, Buffer.alloc(mib * MIB, 0xaa))
  return f
}

async function write(
  name: string,
  extra: Partial<ImageInfo> = {},
  opts: {permitted?: string[]; pendingLimit?: number} = {},
): Promise<{result: WriteResult; file: string}> {
  const file = junkTarget(name)
  const i = info(name, extra)
  const dl = await ImageDownload.open(i, settings)
  const target = await Target.open(file)
  try {
    const result = await writeImage(dl, target, i.disk_format, {
      permitted: opts.permitted ?? ['raw', 'gpt', 'qcow2'],
      pendingLimit: opts.pendingLimit,
      spoolDir: dir,
      reopen: () => ImageDownload.open(i, settings),
      log: quiet,
    })
    await target.sync()
    return {result, file}
  } finally {
    await target.close()
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(os.tmpdir(), 'rdk-image-'))
  srv = await startImageServer()
  const raw = join(dir, 'disk.raw')
  await makeRawImage(raw, SIZE_MIB)
  rawSha = await sha256File(raw)
  const images: Record<string, string[] | null> = {
    'disk.raw': null,
    'disk.qcow2': ['convert', '-f', 'raw', '-O', 'qcow2', raw],
    'disk-c.qcow2': ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw],
    'disk-v2.qcow2': ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=0.10', raw],
    'disk-4k.qcow2': ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw],
    'disk.vmdk': ['convert', '-f', 'raw', '-O', 'vmdk', raw],
  }
  for (const [name, args] of Object.entries(images)) {
    const file = join(dir, name)
    if (args) await qemuImg([...args, file])
    srv.files.set(`/${name}`, file)
    sums.set(name, createHash('sha256').update(readFileSync(file)).digest('hex'))
  }
  // Refused ones: a backing file, extended L2 entries.
  await qemuImg(['create', '-f', 'qcow2', '-b', raw, '-F', 'raw', join(dir, 'backed.qcow2')])
  await qemuImg(['create', '-f', 'qcow2', '-o', 'extended_l2=on', join(dir, 'ext.qcow2'), '16M'])
  for (const name of ['backed.qcow2', 'ext.qcow2']) {
    srv.files.set(`/${name}`, join(dir, name))
    sums.set(
      name,
      createHash('sha256')
        .update(readFileSync(join(dir, name)))
        .digest('hex'),
    )
  }
})

afterAll(async () => {
  await srv?.close()
  if (dir) rmSync(dir, {recursive: true, force: true})
})

describe('format detection', () => {
  it('knows the formats by their magic, and refuses mismatches and unpermitted formats', () => {
    expect(detectFormat(readFileSync(join(dir, 'disk.qcow2')).subarray(0, 65536))).toBe('qcow2')
    expect(detectFormat(readFileSync(join(dir, 'disk.vmdk')).subarray(0, 65536))).toBe('vmdk')
    expect(detectFormat(readFileSync(join(dir, 'disk.raw')).subarray(0, 65536))).toBe('raw')
    expect(() => validateFormat('qcow2', 'raw', ['raw', 'qcow2'])).toThrow('Security: Expected format was raw, but image was actually qcow2')
    expect(() => validateFormat('vmdk', null, ['raw', 'gpt', 'qcow2'])).toThrow(
      'Security: Detected image format was vmdk, but only raw, gpt, qcow2 are allowed',
    )
    expect(() => validateFormat('gpt', 'raw', ['raw', 'gpt', 'qcow2'])).not.toThrow()
    expect(() => validateFormat('raw', 'qcow2', ['raw', 'qcow2'])).toThrow(InvalidImage)
  })

  it('qcow2 headers: backing files and extended L2 are refused with clear errors', () => {
    expect(() => parseQcow2Header(readFileSync(join(dir, 'backed.qcow2')))).toThrow('Security: Image failed safety check: qcow2 image has a backing file')
    expect(() => parseQcow2Header(readFileSync(join(dir, 'ext.qcow2')))).toThrow(/extended L2 entries/)
    expect(parseQcow2Header(readFileSync(join(dir, 'disk-v2.qcow2')))).toMatchObject({version: 2, clusterSize: 65536, virtualSize: SIZE_MIB * MIB})
  })

  it('no_proxy matching', () => {
    const u = new URL('http://images.example.com:8080/x')
    expect(bypassProxy(u, 'example.com')).toBe(true)
    expect(bypassProxy(u, '.example.com')).toBe(true)
    expect(bypassProxy(u, 'example.com:9090')).toBe(false)
    expect(bypassProxy(u, 'other.com, *')).toBe(true)
    expect(bypassProxy(new URL('http://127.0.0.1/x'), '127.0.0.1')).toBe(true)
    expect(bypassProxy(new URL('http://127.0.0.10/x'), '127.0.0.1')).toBe(false)
  })
})

describe('writing images into files', () => {
  for (const [name, method] of [
    ['disk.raw', 'stream-raw'],
    ['disk.qcow2', 'stream-qcow2'],
    ['disk-c.qcow2', 'stream-qcow2'],
    ['disk-v2.qcow2', 'stream-qcow2'],
    ['disk-4k.qcow2', 'stream-qcow2'],
  ] as const) {
    it(`${name}: streamed (${method}), holes read back as zeros, the content equals the raw disk`, async () => {
      const {result, file} = await write(name)
      expect(result).toMatchObject({method, virtualSize: SIZE_MIB * MIB})
      if (name === 'disk-c.qcow2') expect(result.qcow2!.compressedClusters).toBeGreaterThan(40)
      if (method === 'stream-qcow2') expect(result.qcow2!.zeroClusters).toBeGreaterThan(0)
      expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
      // The junk beyond the virtual size is not the image's business.
      expect(
        readFileSync(file)
          .subarray(SIZE_MIB * MIB, SIZE_MIB * MIB + 16)
          .every((b) => b === 0xaa),
      ).toBe(true)
      // holes were not written as data
      expect(result.bytesWritten).toBeLessThan(SIZE_MIB * MIB * 0.8)
    })
  }

  it('a qcow2 whose clusters come before their tables falls back to spool + qemu-img convert, and leaves no spool behind', async () => {
    const {result, file} = await write('disk.qcow2', {}, {pendingLimit: 1})
    expect(result.method).toBe('qemu-img')
    expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
    expect(readdirSync(dir).filter((f) => f.startsWith('.rdk-spool'))).toEqual([])
  })

  it('clusters that arrive before their L2 table (or all tables before a relocated L1) wait in the pending area', async () => {
    // Rewrite qemu-img's layout: copy the first L2 table (or the L1 table) to the end of the file
    // and point the L1 entry (or the header) at the copy. The image reads the same.
    const src = readFileSync(join(dir, 'disk.qcow2'))
    const cs = 2 ** src.readUInt32BE(20)
    const l1 = Number(src.readBigUInt64BE(40))
    const end = Math.ceil(src.length / cs) * cs
    for (const what of ['l2', 'l1'] as const) {
      const out = Buffer.alloc(end + cs)
      src.copy(out)
      if (what === 'l2') {
        const entry = out.readBigUInt64BE(l1)
        const l2 = Number(entry & 0x00fffffffffffe00n)
        out.set(src.subarray(l2, l2 + cs), end)
        out.writeBigUInt64BE((entry & ~0x00fffffffffffe00n) | BigInt(end), l1)
        out.fill(0, l2, l2 + cs) // the old copy is garbage now
      } else {
        out.set(src.subarray(l1, l1 + cs), end)
        out.writeBigUInt64BE(BigInt(end), 40)
        out.fill(0, l1, l1 + cs)
      }
      const name = `moved-${what}.qcow2`
      writeFileSync(join(dir, name), out)
      srv.files.set(`/${name}`, join(dir, name))
      sums.set(name, createHash('sha256').update(out).digest('hex'))
      const {result, file} = await write(name)
      expect(result.method).toBe('stream-qcow2')
      expect(result.qcow2!.maxPendingBytes).toBeGreaterThan(4 * MIB)
      expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
    }
    // qemu-img's own layout needs (almost) no waiting
    const {result} = await write('disk.qcow2')
    expect(result.qcow2!.maxPendingBytes).toBeLessThanOrEqual(2 * 65536)
  })

  it('the spool fallback runs qemu-img check before converting: broken refcounts are refused, the target untouched', async () => {
    // Zero the refcount block (cluster 2 in qemu-img's layout): the data still reads right, but
    // qemu-img check reports corruptions. Streaming does not read refcounts; the spool path checks.
    const b = readFileSync(join(dir, 'disk.qcow2'))
    const cs = 2 ** b.readUInt32BE(20)
    const block = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(48))))
    expect(block).toBe(2 * cs)
    b.fill(0, block, block + cs)
    writeFileSync(join(dir, 'bad-refcounts.qcow2'), b)
    srv.files.set('/bad-refcounts.qcow2', join(dir, 'bad-refcounts.qcow2'))
    sums.set('bad-refcounts.qcow2', createHash('sha256').update(b).digest('hex'))
    const file = junkTarget('bad-refcounts')
    const i = info('bad-refcounts.qcow2')
    const target = await Target.open(file)
    try {
      await expect(
        writeImage(await ImageDownload.open(i, settings), target, null, {
          permitted: ['raw', 'qcow2'],
          pendingLimit: 1,
          spoolDir: dir,
          reopen: () => ImageDownload.open(i, settings),
          log: quiet,
        }),
      ).rejects.toMatchObject({
        type: 'InvalidImage',
        details: expect.stringMatching(
          /^qcow2 image is corrupt \(qemu-img check\): .*\d+ errors were found on the image\.; first: ERROR cluster 0 refcount=0 reference=1$/,
        ),
      })
    } finally {
      await target.close()
    }
    expect(readFileSync(file).every((x) => x === 0xaa)).toBe(true)
    expect(readdirSync(dir).filter((f) => f.startsWith('.rdk-spool'))).toEqual([])
  })

  it('random bytes in the qcow2 metadata: every outcome is a written image or an IPA error, never a crash or a hang', async () => {
    // A seeded walk over the header, refcount table/block, L1 and L2 (qemu-img's layout: clusters
    // 0-4), one to four bytes changed per image. Exceptions other than IPA's errors (a RangeError
    // from a bad offset, a TypeError) or a hang would fail here.
    const src = readFileSync(join(dir, 'disk.qcow2'))
    const cs = 2 ** src.readUInt32BE(20)
    let seed = 0x2d5a
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0
      return (seed >>> 8) % n
    }
    const outcomes = new Map<string, number>()
    for (let round = 0, rounds = Number(process.env.RDK_FUZZ_ROUNDS ?? 60); round < rounds; round++) {
      const b = Buffer.from(src)
      for (let k = 0, n = 1 + rnd(4); k < n; k++) {
        // bias towards the header's fields and the first table entries
        const off = rnd(3) === 0 ? rnd(112) : rnd(5) * cs + rnd(256)
        b[off] = rnd(256)
      }
      const name = `fuzz-${round}.qcow2`
      writeFileSync(join(dir, name), b)
      srv.files.set(`/${name}`, join(dir, name))
      sums.set(name, createHash('sha256').update(b).digest('hex'))
      let outcome: string
      try {
        await write(name)
        outcome = 'written'
      } catch (err) {
        if (!(err instanceof RESTError)) throw new Error(`round ${round}: ${(err as Error).name}: ${(err as Error).message}`)
        outcome = err.constructor.name
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
      rmSync(join(dir, name))
      rmSync(join(dir, `${name}.target`))
    }
    expect(outcomes.get('InvalidImage')).toBeGreaterThan(5)
    console.log('qcow2 metadata fuzz outcomes', Object.fromEntries(outcomes))
  }, 600_000)

  it('vmdk: refused by default; with vmdk permitted, spooled and converted by qemu-img', async () => {
    await expect(write('disk.vmdk')).rejects.toThrow('Security: Detected image format was vmdk, but only raw, gpt, qcow2 are allowed')
    const {result, file} = await write('disk.vmdk', {}, {permitted: ['raw', 'qcow2', 'vmdk']})
    expect(result.method).toBe('qemu-img')
    expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
  })

  it('declared disk_format must match the bytes; backing files and extended L2 are refused', async () => {
    await expect(write('disk.qcow2', {disk_format: 'raw'})).rejects.toThrow('Security: Expected format was raw, but image was actually qcow2')
    await expect(write('backed.qcow2')).rejects.toThrow(/backing file/)
    await expect(write('ext.qcow2')).rejects.toThrow(/extended L2/)
  })
})

describe('download', () => {
  it('a dropped connection is resumed with a Range request (206 verified)', async () => {
    srv.behaviour.set('/disk.qcow2', {dropAfter: 3 * MIB + 123, times: 1})
    const before = srv.requests.length
    try {
      const {file} = await write('disk.qcow2')
      expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
    } finally {
      srv.behaviour.delete('/disk.qcow2')
    }
    const reqs = srv.requests.slice(before).filter((r) => r.path === '/disk.qcow2')
    expect(reqs).toHaveLength(2)
    expect(reqs[0]!.range).toBeUndefined()
    expect(reqs[1]!.range).toMatch(/^bytes=\d+-$/)
    expect(Number(/\d+/.exec(reqs[1]!.range!)![0])).toBeGreaterThan(0)
  })

  it('a server that ignores Range is read again from byte 0 and the image is still right', async () => {
    srv.behaviour.set('/disk.raw', {dropAfter: 5 * MIB, times: 1, ignoreRange: true})
    const i = info('disk.raw')
    try {
      const dl = await ImageDownload.open(i, settings)
      const h = createHash('sha256')
      for await (const c of dl.chunks()) h.update(c)
      expect(h.digest('hex')).toBe(rawSha)
      expect(dl.stats).toMatchObject({resumes: 1, rangeResumes: 0})
      dl.verify('memory')
    } finally {
      srv.behaviour.delete('/disk.raw')
    }
  })

  it('wrong checksum → ImageChecksumError; the checksum may be a URL to a checksums file', async () => {
    await expect(write('disk.raw', {os_hash_value: 'ab'.repeat(32)})).rejects.toBeInstanceOf(ImageChecksumError)
    await expect(write('disk.raw', {os_hash_value: 'ab'.repeat(32)})).rejects.toThrow(
      /Image failed to verify against checksum\. location: .*image ID: disk\.raw; image checksum: (ab)+ \(sha256\); verification checksum: [0-9a-f]{64} \(sha256\)/,
    )
    const sumsFile = join(dir, 'SHA256SUMS')
    writeFileSync(sumsFile, `${'0'.repeat(64)}  other.img\n${sums.get('disk.raw')} *disk.raw\n`)
    srv.files.set('/SHA256SUMS', sumsFile)
    const {file} = await write('disk.raw', {os_hash_algo: undefined, os_hash_value: undefined, checksum: `${srv.url}/SHA256SUMS`})
    expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
    const md5 = createHash('md5')
      .update(readFileSync(join(dir, 'disk.raw')))
      .digest('hex')
    await expect(write('disk.raw', {os_hash_algo: undefined, os_hash_value: undefined, checksum: md5})).resolves.toBeTruthy()
  })

  it('a truncated download (server always closes early) fails with ImageDownloadError after the retries', async () => {
    srv.behaviour.set('/disk.raw', {truncateAt: 2 * MIB})
    try {
      const err = await write('disk.raw').catch((e: unknown) => e)
      expect(err).toBeInstanceOf(ImageDownloadError)
      expect((err as Error).message).toMatch(
        /Download of image disk\.raw failed: the download from .*disk\.raw ended early, after 2097152 of \d+ bytes and 2 retries: /,
      )
    } finally {
      srv.behaviour.delete('/disk.raw')
    }
  })

  it('404 is final (no retry); every URL is tried in turn', async () => {
    const before = srv.requests.length
    const err = await ImageDownload.open(
      info('nosuch.raw', {os_hash_value: 'ab'.repeat(32), urls: [`${srv.url}/nosuch.raw`, `${srv.url}/gone.raw`]}),
      settings,
    ).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ImageDownloadError)
    expect((err as Error).message).toMatch(
      /Download of image nosuch\.raw failed: URL: .*nosuch\.raw; time: .* Error: Received status code 404 from .*, expected 200\. Response body: no such image\n URL: .*gone\.raw/,
    )
    expect(srv.requests.length - before).toBe(2)
    // the second URL works when the first 404s
    const dl = await ImageDownload.open(info('disk.raw', {urls: [`${srv.url}/nosuch.raw`, `${srv.url}/disk.raw`]}), settings)
    for await (const _ of dl.chunks()) void _
    dl.verify('x')
  })

  it('follows redirects (and a resume goes through them again)', async () => {
    srv.behaviour.set('/moved.raw', {redirect: '/disk.raw'})
    srv.behaviour.set('/disk.raw', {dropAfter: 4 * MIB, times: 1})
    try {
      const before = srv.requests.length
      const {file} = await write('disk.raw', {urls: [`${srv.url}/moved.raw`]})
      expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
      expect(srv.requests.slice(before).map((r) => `${r.path} ${r.range ?? ''}`.trim())).toEqual([
        '/moved.raw',
        '/disk.raw',
        expect.stringMatching(/^\/moved\.raw bytes=\d+-$/),
        expect.stringMatching(/^\/disk\.raw bytes=\d+-$/),
      ])
    } finally {
      srv.behaviour.delete('/moved.raw')
      srv.behaviour.delete('/disk.raw')
    }
  })

  it('goes through image_info.proxies (and not for no_proxy hosts); basic auth from the URL', async () => {
    const proxy = await startProxy()
    try {
      const before = srv.requests.length
      const {file} = await write('disk.raw', {proxies: {http: proxy.url}, urls: [`http://user:s3cret@127.0.0.1:${srv.port}/disk.raw`]})
      expect(await sha256File(file, SIZE_MIB * MIB)).toBe(rawSha)
      expect(proxy.seen).toEqual([`http://127.0.0.1:${srv.port}/disk.raw`])
      const req = srv.requests.slice(before).find((r) => r.path === '/disk.raw')!
      expect(req.viaProxy).toBe(true)
      expect(req.authorization).toBe(`Basic ${Buffer.from('user:s3cret').toString('base64')}`)
      await write('disk.raw', {
        proxies: {http: proxy.url},
        no_proxy: 'localhost,127.0.0.1',
        image_request_authorization: Buffer.from('Bearer f00').toString('base64'),
      })
      expect(proxy.seen).toHaveLength(1)
      expect(srv.requests.at(-1)!.authorization).toBe('Bearer f00')
    } finally {
      await proxy.close()
    }
  })

  it('a stalled server trips the read timeout', async () => {
    const {createServer} = await import('node:http')
    const stall = createServer((_req, res) => {
      res.writeHead(200, {'Content-Length': '1000000'})
      res.write(Buffer.alloc(1000))
    })
    await new Promise<void>((r) => stall.listen(0, '127.0.0.1', r))
    const port = (stall.address() as {port: number}).port
    try {
      const dl = await ImageDownload.open(
        {id: 'slow', urls: [`http://127.0.0.1:${port}/slow`], os_hash_algo: 'sha256', os_hash_value: 'x'},
        {...settings, connectionTimeout: 0.3, retries: 0},
      )
      const err = await (async () => {
        for await (const _ of dl.chunks()) void _
      })().catch((e: unknown) => e)
      expect(err).toBeInstanceOf(ImageDownloadError)
      expect((err as Error).message).toMatch(/read timeout/)
    } finally {
      stall.closeAllConnections()
      stall.close()
    }
  })

  it('https through a CONNECT proxy, verified against ipa-cafile', async () => {
    const {createServer: createHttps} = await import('node:https')
    const {createServer: createHttp} = await import('node:http')
    const net = await import('node:net')
    const {generateSelfSignedCert} = await import('../src/agent/tls.js')
    const {certPem, keyPem} = generateSelfSignedCert({address: '127.0.0.1', commonName: 'images'})
    const caFile = join(dir, 'ca.pem')
    writeFileSync(caFile, certPem)
    const body = readFileSync(join(dir, 'disk.raw'))
    const tlsServer = createHttps({cert: certPem, key: keyPem}, (_req, res) => {
      res.writeHead(200, {'Content-Length': body.length})
      res.end(body)
    })
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r))
    const tlsPort = (tlsServer.address() as {port: number}).port
    const tunnels: string[] = []
    const proxy = createHttp()
    proxy.on('connect', (req, sock) => {
      tunnels.push(req.url!)
      const [host, port] = req.url!.split(':')
      if (host !== '127.0.0.1') {
        sock.end('HTTP/1.1 403 Forbidden\r\n\r\n')
        return
      }
      const up = net.connect(Number(port), '127.0.0.1', () => {
        sock.write('HTTP/1.1 200 Connection Established\r\n\r\n')
        up.pipe(sock)
        sock.pipe(up)
      })
      up.on('error', () => sock.destroy())
      sock.on('error', () => up.destroy())
    })
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r))
    const proxyPort = (proxy.address() as {port: number}).port
    try {
      const i: ImageInfo = {
        id: 'tls',
        urls: [`https://127.0.0.1:${tlsPort}/disk.raw`],
        os_hash_algo: 'sha256',
        os_hash_value: sums.get('disk.raw')!,
        proxies: {https: `http://127.0.0.1:${proxyPort}`},
      }
      const dl = await ImageDownload.open(i, {...settings, cafile: caFile})
      const h = createHash('sha256')
      for await (const c of dl.chunks()) h.update(c)
      expect(h.digest('hex')).toBe(rawSha)
      dl.verify('memory')
      expect(tunnels).toEqual([`127.0.0.1:${tlsPort}`])
      // without the CA the certificate is refused (a final error after the retries)
      await expect(ImageDownload.open(i, {...settings, retries: 0})).rejects.toThrow(/self[- ]signed certificate|unable to verify/i)
    } finally {
      tlsServer.closeAllConnections()
      tlsServer.close()
      proxy.closeAllConnections()
      proxy.close()
    }
  })
})
